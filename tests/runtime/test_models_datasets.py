"""Model registry, checkpoint loading (never unpickling) and the dataset registry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from runtime.datasets import EpochBatchSampler, build_datasets, dataset_names
from runtime.models import (
    check_architecture,
    create_model,
    list_architectures,
    load_checkpoint,
    read_weights,
    sources,
)
from spartan.settings import Settings
from spartan.spec import ModelSpec

from .conftest import tiny_spec


@pytest.mark.parametrize(
    ("source", "name", "size"),
    [
        ("timm", "test_resnet", (1, 8, 8)),
        ("timm", "test_vit", (3, 32, 32)),
        ("torchvision", "resnet18", (3, 32, 32)),
        ("torchvision", "resnet18", (1, 32, 32)),
        ("torchvision", "mobilenet_v3_small", (3, 32, 32)),
    ],
)
def test_create_model_by_name(source: str, name: str, size: tuple[int, int, int]) -> None:
    with torch.device("meta"):
        model = create_model(ModelSpec(source=source, name=name, num_classes=7, input_size=size))
        out = model.eval()(torch.empty(2, *size))
    assert out.shape == (2, 7)


def test_registry_lists_sources_and_architectures() -> None:
    assert sources() == ["timm", "torchvision"]
    assert "resnet18" in list_architectures("torchvision")
    assert "resnet50" in list_architectures("timm")
    with pytest.raises(
        ValueError, match=r"^model\.name: unknown torchvision architecture 'resnet1000'"
    ):
        check_architecture("torchvision", "resnet1000")


def _tiny_model() -> torch.nn.Module:
    return create_model(
        ModelSpec(source="timm", name="test_resnet", num_classes=10, input_size=(1, 8, 8))
    )


def test_checkpoint_safetensors_and_pt_roundtrip(tmp_path: Path) -> None:
    source = _tiny_model()
    state = {k: v.clone() for k, v in source.state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        model = _tiny_model()
        report = load_checkpoint(model, tmp_path / name)
        assert not report["missing"] and not report["skipped"]
        for key, value in model.state_dict().items():
            assert torch.equal(value, state[key]), key


def test_checkpoint_skips_a_head_of_another_size(tmp_path: Path) -> None:
    other = create_model(
        ModelSpec(source="timm", name="test_resnet", num_classes=3, input_size=(1, 8, 8))
    )
    save_file(
        {k: v.contiguous() for k, v in other.state_dict().items()}, tmp_path / "w.safetensors"
    )
    report = load_checkpoint(_tiny_model(), tmp_path / "w.safetensors")
    assert report["skipped"] == ["fc.weight", "fc.bias"] or sorted(report["skipped"]) == sorted(
        k for k in other.state_dict() if k.startswith(("fc.", "head"))
    )


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("unpickled!",))


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": {"x": _Evil()}}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"^model\.checkpoint: cannot read 'evil\.pt'"):
        read_weights(tmp_path / "evil.pt")
    (tmp_path / "w.pkl").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"^model\.checkpoint: 'w\.pkl' is not a"):
        read_weights(tmp_path / "w.pkl")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"^model\.checkpoint: cannot read"):
        read_weights(tmp_path / "bad.safetensors")


def test_checkpoint_that_matches_nothing(tmp_path: Path) -> None:
    save_file({"unrelated": torch.zeros(3)}, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match=r"^model\.checkpoint: no tensor"):
        load_checkpoint(_tiny_model(), tmp_path / "w.safetensors")


# datasets -----------------------------------------------------------------------------------
def test_dataset_registry() -> None:
    assert dataset_names() == ["digits", "imagefolder", "synthetic"]


def test_digits_split_is_fixed_and_shaped(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    a = build_datasets(tiny_spec(model={"input_size": [3, 16, 16]}), settings)
    b = build_datasets(tiny_spec(training={"seed": 5}), settings)
    assert len(a.train) + len(a.val) == 1797
    assert len(a.val) == round(1797 * 0.2)
    image, label = a.train[0]
    assert image.shape == (3, 16, 16) and 0 <= label < 10
    assert torch.equal(a.train.labels, b.train.labels)  # type: ignore[attr-defined]
    assert b.train[0][0].shape == (1, 8, 8)


def test_synthetic_is_deterministic(tmp_path: Path) -> None:
    spec = tiny_spec(
        data={"source": "synthetic", "num_samples": 100},
        model={"num_classes": 4},
        training={"batch_size": 16},
    )
    splits = build_datasets(spec, Settings(home=tmp_path))
    assert len(splits.train) == 80 and splits.num_classes == 4
    x1, y1 = splits.train[3]
    x2, y2 = build_datasets(spec, Settings(home=tmp_path)).train[3]
    assert torch.equal(x1, x2) and y1 == y2


def _image_folder(root: Path, classes: tuple[str, ...] = ("a", "b")) -> None:
    for split in ("train", "val"):
        for i, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for j in range(3):
                Image.new("RGB", (12, 10), color=(40 * i, 20 * j, 0)).save(folder / f"{j}.png")


def test_imagefolder(tmp_path: Path) -> None:
    root = tmp_path / "data" / "shapes"
    _image_folder(root)
    settings = Settings(home=tmp_path / "home", data_roots=[tmp_path / "data"])
    spec = tiny_spec(
        data={"source": "imagefolder", "path": str(root)},
        model={"input_size": [3, 8, 8]},
        training={"batch_size": 2},
    )
    splits = build_datasets(spec, settings)
    assert splits.num_classes == 2 and len(splits.train) == 6
    image, label = splits.val[4]
    assert image.shape == (3, 8, 8) and label == 1


def test_batch_order_resumes_mid_epoch() -> None:
    full = list(EpochBatchSampler(50, batch_size=8, seed=3, epoch=2))
    assert len(full) == 6  # the incomplete last batch is dropped
    assert list(EpochBatchSampler(50, batch_size=8, seed=3, epoch=2, start_batch=4)) == full[4:]
    assert list(EpochBatchSampler(50, batch_size=8, seed=3, epoch=3)) != full
    assert list(EpochBatchSampler(50, batch_size=8, seed=3, epoch=2)) == full


def test_batch_larger_than_the_data(tmp_path: Path) -> None:
    spec = tiny_spec(data={"source": "synthetic", "num_samples": 20}, training={"batch_size": 64})
    with pytest.raises(ValueError, match=r"^training\.batch_size: "):
        build_datasets(spec, Settings(home=tmp_path))
