"""Jobs on several devices: real gloo ranks on the CPU (rank 0 in this process or in a real
``spartan train``, the others subprocesses), the tiny digits network.

Identical masks on every rank and from run to run, a stop decided on rank 0 stopping every
rank at the same step, SIGKILL of rank 0's process (no orphan rank) and a resume to the same
result, a rank that raises failing the whole job with its reason, and the spec's bounds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image
from pydantic import ValidationError
from safetensors.torch import load_file

from runtime.datasets import epoch_permutation, train_loader
from runtime.training import TrainHooks, TrainResult, run_training
from runtime.training.distributed import MasksDiffer, RankFailed, Ranks
from runtime.training.stats import masks_sha256
from runtime.validation import validate_spec
from spartan.errors import FieldError
from spartan.settings import Settings
from spartan.spec import JobSpec

from .conftest import TINY, tiny_spec

REPO = Path(__file__).resolve().parents[2]
# 2 epochs of 11 steps at a global batch of 128 (64 per rank), a checkpoint every 2 steps.
TWO_RANKS = {"training": {"epochs": 2, "checkpoint_every_steps": 2}, "resources": {"devices": 2}}


def _spec(**sections: dict[str, Any]) -> JobSpec:
    merged = {k: dict(v) for k, v in TWO_RANKS.items()}
    for name, values in sections.items():
        merged[name] = {**merged.get(name, {}), **values}
    return tiny_spec(**merged)


def _run(tmp: Path, *, ckpt: bool = True, **hooks: Any) -> TrainResult:
    settings = Settings(home=tmp / "home", progress_interval_s=0.0)
    return run_training(
        _spec(),
        out_dir=tmp / "out",
        checkpoint_path=tmp / "ckpt.pt" if ckpt else None,
        settings=settings,
        hooks=TrainHooks(**hooks),
    )


def _assert_same_result(out: Path, ref: Path) -> None:
    for name in ("model.safetensors", "masks.safetensors"):
        a, b = load_file(out / name), load_file(ref / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    metrics = json.loads((out / "metrics.json").read_text())
    ref_metrics = json.loads((ref / "metrics.json").read_text())
    for key in ("dense", "final", "history", "mask_sha256"):
        assert metrics[key] == ref_metrics[key], key


def _rank_children(pid: int) -> list[int]:
    """The rank processes (runtime.training.rank) whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"runtime.training.rank" in cmdline:
            found.append(int(entry.name))
    return found


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" in status.read_text()


def _wait(what: str, check: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted 2-rank run; its artifact folder."""
    tmp = tmp_path_factory.mktemp("two-ranks")
    result = _run(tmp)
    assert result.status == "succeeded"
    return tmp / "out"


# identical masks ------------------------------------------------------------------------
@pytest.mark.slow
def test_two_ranks_train_with_identical_masks(reference: Path) -> None:
    metrics = json.loads((reference / "metrics.json").read_text())
    hashes = metrics["mask_sha256"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    assert metrics["devices"] == 2
    # the hash is that of the masks artifact
    assert hashes[0] == masks_sha256(load_file(reference / "masks.safetensors"))
    assert metrics["steps"] == 22 and [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["final"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert metrics["final"]["top1"] > 0.2  # trained: better than chance on 10 classes


@pytest.mark.slow
def test_the_same_two_rank_job_again_gives_the_same_masks(tmp_path: Path, reference: Path) -> None:
    assert _run(tmp_path, ckpt=False).status == "succeeded"
    _assert_same_result(tmp_path / "out", reference)


def test_ranks_take_disjoint_shards_of_the_one_batch_order() -> None:
    data = torch.utils.data.TensorDataset(torch.arange(40))
    kwargs = {"batch_size": 8, "seed": 3, "epoch": 1, "start_batch": 2}
    (whole,) = zip(*train_loader(data, **kwargs), strict=True)
    shards = [[b[0] for b in train_loader(data, **kwargs, rank=r, world_size=2)] for r in range(2)]
    for b, batch in enumerate(whole):
        assert torch.equal(torch.cat([shards[0][b], shards[1][b]]), batch)
    assert torch.equal(
        torch.cat(whole), epoch_permutation(40, seed=3, epoch=1)[16:40]
    )  # resumed at batch 2


# stopping and resuming ------------------------------------------------------------------
@pytest.mark.slow
def test_preempt_on_rank_0_stops_every_rank_and_resumes_bit_identically(
    tmp_path: Path, reference: Path
) -> None:
    calls = {"n": 0}

    def stop() -> str | None:
        calls["n"] += 1  # dense evaluation polls first, then one poll per step
        return "preempt" if calls["n"] == 12 else None

    assert _run(tmp_path, stop=stop).status == "preempted"
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert 0 < saved["position"]["step"] < 11  # mid first epoch
    assert saved["world_size"] == 2 and len(saved["ranks"]) == 2
    assert _run(tmp_path).status == "succeeded"
    _assert_same_result(tmp_path / "out", reference)


@pytest.mark.slow
def test_sigkill_of_rank_0_leaves_no_orphan_and_resumes_to_the_same_result(
    tmp_path: Path, reference: Path
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(_spec().model_dump(mode="json")))
    out = tmp_path / "run"
    checkpoint = out / "checkpoint.pt"
    env = {**os.environ, "SPARTAN_HOME": str(tmp_path / "home"), "COLUMNS": "400"}
    command = [sys.executable, "-m", "cli", "train", str(spec), "--out", str(out)]
    log = (tmp_path / "first.log").open("wb")
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait("a checkpoint", checkpoint.exists)
        rank1 = _wait("rank 1's process", lambda: _rank_children(first.pid))
        os.kill(first.pid, signal.SIGKILL)  # rank 0's process only: no goodbye
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    _wait("rank 1 to die with rank 0", lambda: all(_gone(pid) for pid in rank1), timeout=15)
    saved = torch.load(checkpoint, weights_only=True)
    assert 0 < saved["position"]["step"] < 22, "killed after training"
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, timeout=600)
    assert again.returncode == 0, again.stderr.decode()[-3000:]
    assert f"resuming from {checkpoint}" in again.stderr.decode()
    _assert_same_result(out, reference)


# failures -------------------------------------------------------------------------------
def _pictures(root: Path, *, train: int, val: int) -> list[Path]:
    """An imagefolder of 8x8 images in classes a and b; the training files in the order of
    torchvision's ImageFolder (class, then name)."""
    files = []
    for split, count in (("train", train), ("val", val)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                path = root / split / c / f"{i:02d}.png"
                Image.new("L", (8, 8), 200 * (c == "a") + i).save(path)
                if split == "train":
                    files.append(path)
    return files


@pytest.mark.slow
def test_a_rank_that_raises_fails_the_job_with_its_reason(tmp_path: Path) -> None:
    """A corrupt training image that only rank 1's shard of the second batch holds."""
    settings = Settings(
        home=tmp_path / "home", data_roots=[tmp_path / "data"], progress_interval_s=0.0
    )
    files = _pictures(tmp_path / "data" / "pics", train=16, val=4)
    order = epoch_permutation(len(files), seed=0, epoch=0)
    # global batch 8: batch 1 is order[8:16], rank 1's half of it order[12:16]
    broken = files[int(order[12])]
    broken.write_bytes(b"not an image")
    spec = tiny_spec(
        model={"input_size": [1, 8, 8], "num_classes": 2},
        data={"source": "imagefolder", "path": str(tmp_path / "data" / "pics")},
        training={"batch_size": 8, "epochs": 3},
        resources={"devices": 2},
    )
    validate_spec(spec, settings)
    started = time.monotonic()
    with pytest.raises(RankFailed) as failed:
        run_training(spec, out_dir=tmp_path / "out", checkpoint_path=None, settings=settings)
    reason = str(failed.value).splitlines()[0]
    assert reason.startswith("rank 1 failed: UnidentifiedImageError: "), reason
    assert broken.name in reason
    assert time.monotonic() - started < 120  # no hang
    assert not _rank_children(os.getpid())  # no rank left behind
    assert not torch.distributed.is_initialized()  # the process group is torn down


def _check_masks_as(rank: int, port: int, out: str) -> None:
    """One of two gloo ranks (a spawned process): rank 1's mask differs in one entry."""
    store = torch.distributed.TCPStore("127.0.0.1", port, 2, is_master=rank == 0)
    torch.distributed.init_process_group("gloo", store=store, rank=rank, world_size=2)
    try:
        mask = torch.ones(4, 3, dtype=torch.bool)
        mask[2, 1] = rank == 0
        ranks = Ranks(rank=rank, world_size=2, device=torch.device("cpu"))
        same = ranks.check_masks({"layer.weight": torch.ones(2, dtype=torch.bool)}, epoch=1)
        try:
            ranks.check_masks({"layer.weight": mask}, epoch=3)
            message = "no error"
        except MasksDiffer as exc:
            message = str(exc)
        Path(out, f"{rank}.json").write_text(json.dumps({"same": same, "differ": message}))
    finally:
        torch.distributed.destroy_process_group()


def test_masks_that_differ_across_ranks_fail_every_rank_with_both_hashes(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.spawn(_check_masks_as, args=(port, str(tmp_path)), nprocs=2)
    seen = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert seen[0] == seen[1]
    assert len(seen[0]["same"]) == 2 and len(set(seen[0]["same"])) == 1
    message = seen[0]["differ"]
    assert message.startswith("masks differ across ranks at epoch 3: rank 0 "), message
    assert ", rank 1 " in message


# the spec ---------------------------------------------------------------------------------
@pytest.mark.parametrize("devices", [0, -1, 65])
def test_devices_out_of_bounds_name_the_field(devices: int) -> None:
    with pytest.raises(ValidationError) as bad:
        JobSpec.model_validate({**TINY, "resources": {"devices": devices}})
    assert [e["loc"] for e in bad.value.errors()] == [("resources", "devices")]


def test_a_batch_that_does_not_split_across_the_devices_names_the_batch(
    settings: Settings,
) -> None:
    spec = tiny_spec(training={"batch_size": 127}, resources={"devices": 2})
    with pytest.raises(FieldError) as bad:
        validate_spec(spec, settings)
    assert bad.value.loc == ("training", "batch_size")
    assert "resources.devices=2" in str(bad.value)
    with pytest.raises(FieldError, match=r"training\.batch_size"):
        run_training(spec, out_dir=settings.home / "out", checkpoint_path=None, settings=settings)
    validate_spec(tiny_spec(training={"batch_size": 128}, resources={"devices": 4}), settings)
