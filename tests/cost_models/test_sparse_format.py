"""The compressed sparse file: exact round trips for every layout, the size bounds, loading
by architecture name, deployments replayed on load, and errors naming the bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save, save_file
from torch import nn

import cost_models
from cost_models.architectures import Architecture, build
from cost_models.layouts import weight_matrix
from cost_models.sparse_format import FORMAT, pack_bits, unpack_bits
from spartan_core import Sparsifier, SparsifierConfig

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _zero_unstructured(module: nn.Module, density: float) -> None:
    matrix = weight_matrix(module)
    keep = torch.rand(matrix.shape, generator=torch.Generator().manual_seed(1)) < density
    with torch.no_grad():
        module.weight.mul_(keep.reshape(module.weight.shape))


def _zero_blocks(module: nn.Module, block: tuple[int, int], density: float) -> None:
    r, c = block
    rows, cols = weight_matrix(module).shape
    gen = torch.Generator().manual_seed(2)
    keep = torch.rand(rows // r, cols // c, generator=gen) < density
    keep[0, 0] = True
    full = keep.repeat_interleave(r, 0).repeat_interleave(c, 1)
    with torch.no_grad():
        module.weight.mul_(full.reshape(module.weight.shape))


def _zero_nm(module: nn.Module, n: int, m: int) -> None:
    """Keep the n largest |w| of every m consecutive inputs (N:M built by hand)."""
    matrix = weight_matrix(module)
    groups = matrix.reshape(matrix.shape[0], -1, m)
    top = groups.abs().topk(n, dim=2).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, top, True)
    with torch.no_grad():
        module.weight.mul_(keep.reshape(module.weight.shape))


MODULES = {
    "linear": (lambda: nn.Linear(64, 32), (5, 64)),
    "conv": (lambda: nn.Conv2d(16, 32, 3, padding=1), (2, 16, 9, 9)),
    "conv_strided_grouped": (
        lambda: nn.Conv2d(16, 16, 3, stride=2, padding=2, groups=2, bias=False),
        (2, 16, 9, 9),
    ),
}
# (layout kind, how to zero, expected encoding, extra metadata)
LAYOUTS = {
    "dense": ("dense", lambda m: None, "dense"),
    "unstructured": ("unstructured", lambda m: _zero_unstructured(m, 0.3), "bitmask"),
    "blocks": ("blocks", lambda m: _zero_blocks(m, (8, 8), 0.4), "blocks"),
    "nm": ("nm", lambda m: _zero_nm(m, 2, 4), "nm"),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("kind", sorted(MODULES))
def test_round_trip_is_exact_for_every_layout(tmp_path: Path, kind: str, layout: str) -> None:
    make, input_shape = MODULES[kind]
    torch.manual_seed(0)
    module = make()
    want_kind, zero, encoding = LAYOUTS[layout]
    zero(module)
    path = tmp_path / "m.sparse.safetensors"
    layers = cost_models.save_sparse(module, path)
    assert layers["weight"]["layout"]["kind"] == want_kind
    assert layers["weight"]["encoding"] == encoding
    torch.manual_seed(1)
    loaded = cost_models.load_sparse(path, make())
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(input_shape)
    torch.testing.assert_close(loaded(x), module(x), rtol=0, atol=0)
    with safe_open(str(path), framework="pt") as handle:
        names = set(handle.keys())
        assert handle.metadata()["format"] == FORMAT
    if encoding != "dense":
        assert "weight" not in names and "weight:values" in names


def test_sparse_state_dict_holds_only_kept_values(tmp_path: Path) -> None:
    layer = nn.Linear(64, 32)
    _zero_unstructured(layer, 0.25)
    cost_models.save_sparse(layer, tmp_path / "m.sparse.safetensors")
    with safe_open(str(tmp_path / "m.sparse.safetensors"), framework="pt") as handle:
        values = handle.get_tensor("weight:values")
        bitmask = handle.get_tensor("weight:bitmask")
        assert torch.equal(handle.get_tensor("bias"), layer.bias.detach())
    nonzero = layer.weight.detach() != 0
    assert torch.equal(values, layer.weight.detach()[nonzero])
    expected = np.packbits(nonzero.reshape(-1).numpy(), bitorder="little")
    assert np.array_equal(bitmask.numpy(), expected)  # documented: little-endian packbits


def test_blocks_and_nm_parts(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 16))
    _zero_blocks(model[0], (16, 16), 0.5)
    _zero_nm(model[1], 2, 4)
    layers = cost_models.save_sparse(model, tmp_path / "m.sparse.safetensors")
    assert layers["0.weight"]["block"] == [16, 16]
    assert layers["1.weight"]["nm"] == [2, 4]
    with safe_open(str(tmp_path / "m.sparse.safetensors"), framework="pt") as handle:
        kept = int((model[0].weight.reshape(2, 16, 4, 16) != 0).any(3).any(1).sum())
        assert handle.get_tensor("0.weight:values").shape == (kept, 16, 16)
        assert handle.get_tensor("0.weight:block_row_ptr").dtype == torch.int32
        assert handle.get_tensor("0.weight:block_row_ptr")[-1] == kept
        assert handle.get_tensor("1.weight:values").shape == (16, 8, 2)
        # 2 bits per kept weight: 16 * 8 groups * 2 slots * 2 bits / 8
        assert handle.get_tensor("1.weight:nm_index").numel() == 16 * 8 * 2 * 2 // 8


def test_nm_group_with_fewer_than_n_nonzeros(tmp_path: Path) -> None:
    layer = nn.Linear(64, 4, bias=False)
    _zero_nm(layer, 2, 4)
    with torch.no_grad():
        layer.weight[0, :4] = 0.0  # an empty group
        layer.weight[1, 4:8] = torch.tensor([0.0, 0.0, 0.0, 3.0])  # one nonzero
    path = tmp_path / "m.sparse.safetensors"
    assert cost_models.save_sparse(layer, path)["weight"]["encoding"] == "nm"
    loaded = cost_models.load_sparse(path, nn.Linear(64, 4, bias=False))
    assert torch.equal(loaded.weight, layer.weight)


def test_a_layer_pruned_away_costs_no_bitmask(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 8))
    with torch.no_grad():
        model[0].weight.zero_()
    path = tmp_path / "m.sparse.safetensors"
    layers = cost_models.save_sparse(model, path)
    assert layers["0.weight"]["encoding"] == "blocks" and layers["0.weight"]["block"] == [1, 1]
    with safe_open(str(path), framework="pt") as handle:
        assert handle.get_tensor("0.weight:values").numel() == 0
    loaded = cost_models.load_sparse(path, nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 8)))
    assert torch.equal(loaded[0].weight, model[0].weight)


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_pack_bits_round_trip(bits: int) -> None:
    values = torch.randint(0, 2**bits, (37,), generator=torch.Generator().manual_seed(0))
    packed = pack_bits(values, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == (37 * bits + 7) // 8
    assert torch.equal(unpack_bits(packed, bits, 37), values)


# real architectures -------------------------------------------------------------------------
RESNET = Architecture("torchvision", "resnet18", 10, (3, 32, 32))
VIT = Architecture("timm", "vit_tiny_patch16_224", 10, (3, 32, 32))  # 2 x 2 patches + cls


def _pruned(arch: Architecture, block: tuple[int, int], include: tuple[str, ...]) -> nn.Module:
    """Random init pruned by the Sparsifier to 90% of the weights (finalized)."""
    torch.manual_seed(0)
    model = build(arch)
    config = SparsifierConfig(target=0.1, block_shape=block, include=include, warmup_frac=0.0)
    sparsifier = Sparsifier(model, config, total_steps=1)
    sparsifier.step()
    return sparsifier.finalize().eval()


SIZE_CASES = {
    "resnet18-unstructured": (RESNET, (1, 1), (), 0.15),
    "resnet18-blocks16": (RESNET, (16, 16), ("layer*",), 0.12),
    "vit-unstructured": (VIT, (1, 1), (), 0.15),
    "vit-blocks16": (VIT, (16, 16), ("blocks.*",), 0.12),
}


@pytest.mark.parametrize("case", sorted(SIZE_CASES))
def test_size_bound_and_outputs_on_real_architectures(tmp_path: Path, case: str) -> None:
    arch, block, include, bound = SIZE_CASES[case]
    model = _pruned(arch, block, include)
    dense_path, sparse_path = tmp_path / "model.safetensors", tmp_path / "model.sparse.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, dense_path)
    layers = cost_models.save_sparse(model, sparse_path, architecture=arch)
    ratio = sparse_path.stat().st_size / dense_path.stat().st_size
    print(f"{case}: {sparse_path.stat().st_size} / {dense_path.stat().st_size} = {ratio:.4f}")
    assert ratio <= bound
    if block != (1, 1):
        assert any(v["encoding"] == "blocks" and v["block"] == list(block) for v in layers.values())
    loaded = cost_models.load_sparse(sparse_path)  # built from the metadata
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(2, *arch.input_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)


def test_load_by_name_builds_the_architecture(tmp_path: Path) -> None:
    arch = Architecture("timm", "test_resnet", 7, (1, 8, 8))
    torch.manual_seed(0)
    model = build(arch)
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            _zero_unstructured(module, 0.2)
    path = tmp_path / "m.sparse.safetensors"
    cost_models.save_sparse(model, path, architecture=arch.to_dict())
    loaded = cost_models.load_sparse(path)
    assert type(loaded) is type(model)
    _, metadata = cost_models.read_sparse(path)
    assert metadata["architecture"] == arch.to_dict()
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x), rtol=0, atol=0)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 32, 3, padding=1)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.fc2(torch.relu(self.fc1(x)))


def test_deployment_is_replayed_on_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _Net().eval()
    _zero_unstructured(model.conv, 0.1)
    _zero_blocks(model.fc1, (16, 16), 0.25)
    _zero_nm(model.fc2, 2, 4)
    x = torch.randn(4, 8, 6, 6)
    deployed = cost_models.deploy(model, x)
    path = tmp_path / "m.sparse.safetensors"
    cost_models.save_sparse(model, path, deployment=deployed.deploy_report)
    _, metadata = cost_models.read_sparse(path)
    kernels = cost_models.deployed_kernels(deployed)
    assert metadata["deployment"]["device_type"] == "cpu"
    assert metadata["deployment"]["kernels"] == kernels
    loaded = cost_models.load_sparse(path, _Net())
    assert cost_models.deployed_kernels(loaded) == kernels
    assert loaded.deploy_report["kernels"] == kernels
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-5)
    plain = cost_models.load_sparse(path, _Net(), apply_deployment=False)
    assert set(cost_models.deployed_kernels(plain).values()) == {"dense"}
    assert isinstance(plain.fc1, nn.Linear)


def test_a_deployment_for_another_device_type_loads_plain(tmp_path: Path) -> None:
    model = _Net()
    path = tmp_path / "m.sparse.safetensors"
    deployment = {"device": "cuda:0", "kernels": {"fc1": "cuda_bsr"}}
    cost_models.save_sparse(model, path, deployment=deployment)
    loaded = cost_models.load_sparse(path, _Net(), device="cpu")
    assert isinstance(loaded.fc1, nn.Linear) and not hasattr(loaded, "deploy_report")


# bad input ----------------------------------------------------------------------------------
def test_errors_name_the_bad_input(tmp_path: Path) -> None:
    model = nn.Linear(8, 4)
    path = tmp_path / "m.sparse.safetensors"
    cost_models.save_sparse(model, path)
    with pytest.raises(ValueError, match=r"^path: no file .*missing\.safetensors"):
        cost_models.load_sparse(tmp_path / "missing.safetensors", nn.Linear(8, 4))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ValueError, match=r"^path: 'garbage.safetensors' is not a safetensors"):
        cost_models.load_sparse(garbage, nn.Linear(8, 4))
    plain = tmp_path / "model.safetensors"
    save_file(model.state_dict(), plain)
    with pytest.raises(ValueError, match=r"^path: 'model.safetensors' is not a spartan.sparse"):
        cost_models.load_sparse(plain, nn.Linear(8, 4))
    with pytest.raises(ValueError, match=r"^architecture: 'm.sparse.safetensors' names no"):
        cost_models.load_sparse(path)
    with pytest.raises(ValueError, match=r"^model: the weights .* missing 0.bias, 0.weight; unex"):
        cost_models.load_sparse(path, nn.Sequential(nn.Linear(8, 4)))
    with pytest.raises(ValueError, match=r"^model: .* shapes bias \(file \[4\], model \[5\]\)"):
        cost_models.load_sparse(path, nn.Linear(8, 5))
    with pytest.raises(ValueError, match=r"^device: unknown device 'gpu0'"):
        cost_models.load_sparse(path, nn.Linear(8, 4), device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^device: 'cuda' requested"):
            cost_models.load_sparse(path, nn.Linear(8, 4), device="cuda")


def test_errors_for_bad_metadata_and_arguments(tmp_path: Path) -> None:
    unknown = tmp_path / "unknown.sparse.safetensors"
    cost_models.save_sparse(
        nn.Linear(8, 4),
        unknown,
        architecture={"source": "timm", "name": "resnet1000", "num_classes": 4,
                      "input_size": [3, 8, 8]},
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"^architecture.name: unknown timm architecture"):
        cost_models.load_sparse(unknown)
    with pytest.raises(ValueError, match=r"^architecture.num_classes"):
        cost_models.save_sparse(
            nn.Linear(8, 4), unknown, architecture={"source": "timm", "name": "x"}
        )
    with pytest.raises(ValueError, match=r"^deployment: expected"):
        cost_models.save_sparse(nn.Linear(8, 4), unknown, deployment={"kernels": {}})
    with pytest.raises(ValueError, match=r"^deployment.device: unknown device 'gpu0'"):
        cost_models.save_sparse(nn.Linear(8, 4), unknown, deployment={"device": "gpu0"})
    newer = tmp_path / "newer.sparse.safetensors"
    newer.write_bytes(save({"w": torch.zeros(1)}, metadata={"format": FORMAT, "version": "9"}))
    with pytest.raises(ValueError, match=r"^path: 'newer.sparse.safetensors' is .* version '9'"):
        cost_models.load_sparse(newer, nn.Linear(8, 4))
    layer = nn.Linear(8, 4)
    _zero_unstructured(layer, 0.5)
    broken = tmp_path / "broken.sparse.safetensors"
    cost_models.save_sparse(layer, broken)
    with safe_open(str(broken), framework="pt") as handle:
        meta = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys() if k != "weight:bitmask"}  # noqa: SIM118
    broken.write_bytes(save(tensors, metadata=meta))
    with pytest.raises(ValueError, match=r"^broken.sparse.safetensors: cannot rebuild 'weight'"):
        cost_models.load_sparse(broken, nn.Linear(8, 4))
    masked = nn.Linear(8, 4)
    Sparsifier(masked, SparsifierConfig(target=0.5), total_steps=2)
    with pytest.raises(ValueError, match=r"^model: it still carries masks"):
        cost_models.save_sparse(masked, unknown)
    assert json.loads(meta["layers"])["weight"]["encoding"] == "bitmask"
