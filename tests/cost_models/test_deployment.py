"""Deployment: every kernel computes what the dense layer computes; the fastest is kept."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.testing import assert_close

import cost_models
from cost_models import deployment, native
from cost_models.deployment import KERNELS, apply_kernels, deploy, deployed_kernels, kernel_names
from cost_models.layouts import detect_layout, weight_matrix
from cost_models.sparse_layers import (
    NativeBsrLinear,
    NativeCsrConv2d,
    NativeCsrLinear,
    pack_block_rows,
    pack_row_groups,
)

needs_native = pytest.mark.skipif(not native.available(), reason="no C compiler on this machine")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA kernels need a GPU")


def _prune(weight: torch.Tensor, density: float, block: tuple[int, int] = (1, 1)) -> None:
    """Zero all but a random ``density`` of the r x c blocks of an (out, in)-viewed weight."""
    matrix = weight.data.reshape(weight.shape[0], -1)
    r, c = block
    rows, cols = matrix.shape
    keep = torch.rand(rows // r, cols // c) < density
    keep[0, 0] = True
    full = keep.repeat_interleave(r, 0).repeat_interleave(c, 1)
    matrix.mul_(full)


def _nm(weight: torch.Tensor, n: int, m: int) -> None:
    matrix = weight.data.reshape(weight.shape[0], -1)
    groups = matrix.reshape(matrix.shape[0], -1, m)
    order = groups.abs().argsort(dim=2, descending=True)
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, order[..., :n], True)
    groups.mul_(mask)


def test_layouts_are_read_off_the_zeros() -> None:
    torch.manual_seed(0)
    w = torch.randn(64, 96)
    assert detect_layout(w).kind == "dense"
    b = w.clone()
    _prune(b, 0.2, (16, 16))
    layout = detect_layout(b)
    assert (layout.kind, layout.block) == ("blocks", (16, 16))
    assert layout.kept_blocks == int((b.reshape(4, 16, 6, 16) != 0).any(3).any(1).sum())
    nm = w.clone()
    _nm(nm, 2, 4)
    layout = detect_layout(nm)
    assert (layout.kind, layout.nm) == ("nm", (2, 4))
    assert layout.density == pytest.approx(0.5)
    u = w.clone()
    _prune(u, 0.1)
    assert detect_layout(u).kind == "unstructured"


def test_packed_formats_hold_exactly_the_kept_entries() -> None:
    torch.manual_seed(1)
    w = torch.randn(32, 48)
    _prune(w, 0.3, (16, 8))
    vals, row_ptr, cols = pack_block_rows(w, (16, 8))
    assert vals.shape[1:] == (8, 16) and row_ptr[-1] == vals.shape[0] == cols.numel()
    rebuilt = torch.zeros(2, 6, 16, 8)  # (R, C, r, c)
    for row in range(2):
        for b in range(int(row_ptr[row]), int(row_ptr[row + 1])):
            rebuilt[row, cols[b]] = vals[b].t()
    assert torch.equal(rebuilt.permute(0, 2, 1, 3).reshape(32, 48), w)
    vals, col_ptr, cols = pack_row_groups(w, 4)
    assert int(col_ptr[-1]) * 4 == vals.numel()


def _linear(inp: int, out: int, bias: bool = True) -> nn.Linear:
    layer = nn.Linear(inp, out, bias=bias)
    return layer.eval()


@needs_native
@pytest.mark.parametrize("block", [(8, 8), (16, 16), (16, 4), (32, 32), (32, 8), (24, 8)])
@pytest.mark.parametrize("tokens", [1, 5, 13, 17, 197])
def test_native_bsr_linear_equals_dense(block: tuple[int, int], tokens: int) -> None:
    torch.manual_seed(2)
    layer = _linear(96, 192, bias=block != (16, 4))
    _prune(layer.weight, 0.25, block)
    x = torch.randn(tokens, 96)
    sparse = NativeBsrLinear(layer, detect_layout(weight_matrix(layer)))
    with torch.no_grad():
        assert_close(sparse(x), layer(x), rtol=1e-4, atol=1e-4)
        x3 = torch.randn(2, tokens, 96)
        assert_close(sparse(x3), layer(x3), rtol=1e-4, atol=1e-4)


def _assert_same_for_any_thread_count(sparse: nn.Module, dense: nn.Module, x: torch.Tensor) -> None:
    """``sparse`` equals ``dense`` on ``x``, and gives the same bits for 1, 2 and 3 threads."""
    before = torch.get_num_threads()
    outputs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            with torch.no_grad():
                outputs.append(sparse(x))
    finally:
        torch.set_num_threads(before)
    with torch.no_grad():
        assert_close(outputs[0], dense(x), rtol=1e-4, atol=1e-4)
    assert all(torch.equal(out, outputs[0]) for out in outputs[1:])


@needs_native
@pytest.mark.parametrize(
    ("kind", "block", "tokens"),
    [
        ("bsr", (16, 16), 301),  # 4 KB a token: 301 tokens are 1.2 MB of x, cut into chunks
        ("csr", (1, 1), 301),  # chunks of a thread's tokens, each in, groups, out
        ("csr", (16, 16), 301),
        ("csr", (1, 1), 30),  # too few tokens for chunks: groups shared out dynamically
    ],
)
def test_native_linear_gives_the_same_values_for_any_thread_count(
    kind: str, block: tuple[int, int], tokens: int
) -> None:
    torch.manual_seed(3)
    layer = _linear(1024, 64)
    _prune(layer.weight, 0.25, block)
    x = torch.randn(tokens, 1024)
    cls = NativeBsrLinear if kind == "bsr" else NativeCsrLinear
    sparse = cls(layer, detect_layout(weight_matrix(layer)))
    _assert_same_for_any_thread_count(sparse, layer, x)


@needs_native
@pytest.mark.parametrize("batch", [1, 3])
def test_native_conv_gives_the_same_values_for_any_thread_count(batch: int) -> None:
    torch.manual_seed(4)
    layer = nn.Conv2d(64, 32, 3, padding=1).eval()  # 576 x 784 of xT: 1.8 MB, in chunks
    _prune(layer.weight, 0.2)
    x = torch.randn(batch, 64, 28, 28)
    sparse = NativeCsrConv2d(layer, detect_layout(weight_matrix(layer)))
    _assert_same_for_any_thread_count(sparse, layer, x)


@needs_native
@pytest.mark.parametrize("density", [0.0, 0.05, 0.5, 1.0])
@pytest.mark.parametrize("block", [(1, 1), (4, 4), (16, 16), (2, 2)])
def test_native_csr_linear_equals_dense(density: float, block: tuple[int, int]) -> None:
    torch.manual_seed(3)
    layer = _linear(64, 96)
    _prune(layer.weight, density, block)
    x = torch.randn(3, 37, 64)  # 111 tokens: vector tiles and a scalar tail
    layout = detect_layout(weight_matrix(layer))
    sparse = NativeCsrLinear(layer, layout)
    with torch.no_grad():
        assert_close(sparse(x), layer(x), rtol=1e-4, atol=1e-4)


@needs_native
@pytest.mark.parametrize(
    "conv",
    [
        dict(in_channels=16, out_channels=32, kernel_size=3, padding=1),
        dict(in_channels=16, out_channels=32, kernel_size=3, stride=2, padding=1, bias=False),
        dict(in_channels=16, out_channels=32, kernel_size=1),
        dict(in_channels=16, out_channels=16, kernel_size=3, padding=1, groups=4),
        dict(in_channels=8, out_channels=16, kernel_size=(3, 5), padding=(1, 2), dilation=2),
        dict(in_channels=8, out_channels=16, kernel_size=3, padding=1, padding_mode="reflect"),
        dict(in_channels=3, out_channels=16, kernel_size=7, stride=2, padding=3),
        dict(in_channels=8, out_channels=16, kernel_size=4, padding="same"),  # uneven padding
        dict(in_channels=8, out_channels=16, kernel_size=(1, 3), stride=(1, 2)),
    ],
)
def test_native_csr_conv_equals_dense(conv: dict) -> None:
    torch.manual_seed(4)
    layer = nn.Conv2d(**conv).eval()
    _prune(layer.weight, 0.2)
    sparse = NativeCsrConv2d(layer, detect_layout(weight_matrix(layer)))
    with torch.no_grad():
        for shape in [(2, conv["in_channels"], 15, 17), (conv["in_channels"], 9, 9)]:
            x = torch.randn(shape)
            assert_close(sparse(x), layer(x), rtol=1e-4, atol=1e-4)


@needs_native
def test_block_conv_rows_share_columns() -> None:
    torch.manual_seed(5)
    layer = nn.Conv2d(32, 32, 3, padding=1).eval()
    _prune(layer.weight, 0.3, (16, 16))
    layout = detect_layout(weight_matrix(layer))
    assert layout.block == (16, 16)
    sparse = NativeCsrConv2d(layer, layout)
    assert sparse.group == 16
    x = torch.randn(1, 32, 8, 8)
    with torch.no_grad():
        assert_close(sparse(x), layer(x), rtol=1e-4, atol=1e-4)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 8 * 8, 128)
        self.fc2 = nn.Linear(128, 64)
        self.dense = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x)).flatten(1)
        return self.dense(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_deploy_keeps_outputs_and_reports_every_layer() -> None:
    torch.manual_seed(6)
    net = _Net().eval()
    _prune(net.conv.weight, 0.1)
    _prune(net.fc1.weight, 0.1, (16, 16))
    _nm(net.fc2.weight, 2, 4)
    x = torch.randn(4, 3, 8, 8)
    deployed = deploy(net, x)
    with torch.no_grad():
        assert_close(deployed(x), net(x), rtol=1e-4, atol=1e-4)
    report = deployed.deploy_report
    rows = {row["name"]: row for row in report["layers"]}
    assert set(rows) == {"conv", "fc1", "fc2", "dense"}
    assert rows["fc1"]["layout"]["kind"] == "blocks"
    assert rows["fc2"]["layout"]["nm"] == [2, 4]
    assert rows["dense"]["kernel"] == "dense"
    for row in rows.values():
        assert row["kernel"] in kernel_names()
        assert row["dense_ms"] > 0 and row["deployed_ms"] > 0
        assert row["deployed_ms"] == row["candidates_ms"][row["kernel"]]
        # the chosen kernel is the fastest measured, or dense
        assert row["deployed_ms"] <= row["dense_ms"]
    assert deployed_kernels(deployed) == {n: r["kernel"] for n, r in rows.items()}
    totals = report["totals"]
    assert totals["dense_ms"] > 0 and totals["deployed_ms"] > 0
    assert sum(totals["kernels"].values()) == 4
    assert "fallback" in totals
    assert report["batch_size"] == 4 and report["device"] == "cpu"
    # the model passed in is untouched
    assert all(isinstance(m, nn.Linear | nn.Conv2d) for m in (net.conv, net.fc1, net.fc2))


@needs_native
def test_a_mostly_dense_layer_stays_dense() -> None:
    """30% sparse: every sparse kernel is slower than dense here, so dense is kept."""
    torch.manual_seed(7)
    layer = _linear(512, 512)
    _prune(layer.weight, 0.7)
    model = nn.Sequential(layer)
    deployed = deploy(model, torch.randn(64, 512))
    (row,) = deployed.deploy_report["layers"]
    assert row["kernel"] == "dense"
    assert isinstance(deployed[0], nn.Linear)
    assert set(row["candidates_ms"]) >= {"dense", "native_csr"}


@needs_native
def test_a_very_sparse_block_layer_runs_a_sparse_kernel() -> None:
    torch.manual_seed(8)
    layer = _linear(768, 768)
    _prune(layer.weight, 0.05, (16, 16))
    deployed = deploy(nn.Sequential(layer), torch.randn(197, 768))
    (row,) = deployed.deploy_report["layers"]
    assert row["kernel"] != "dense"
    assert row["candidates_ms"]["native_bsr"] < row["dense_ms"]


def test_a_model_no_faster_end_to_end_stays_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(12)
    layer = _linear(768, 768)
    _prune(layer.weight, 0.05, (16, 16))
    model, x = nn.Sequential(layer), torch.randn(197, 768)
    # the layer's own timing picks a sparse kernel; the whole model then measures slower
    monkeypatch.setattr(deployment, "_end_to_end_ms", lambda *args: (1.0, 1.5))
    deployed = deploy(model, x)
    report = deployed.deploy_report
    assert "no faster than dense" in report["totals"]["fallback"]
    assert report["totals"]["kernels"] == {"dense": 1}
    assert report["totals"]["deployed_ms"] == report["totals"]["dense_ms"] == 1.0
    (row,) = report["layers"]
    assert row["kernel"] == "dense" and row["candidates_ms"]["native_bsr"] < row["dense_ms"]
    assert set(deployed_kernels(deployed).values()) == {"dense"}
    assert_close(deployed(x), model(x))


def test_apply_kernels_replays_a_choice() -> None:
    torch.manual_seed(9)
    net = _Net().eval()
    _prune(net.fc1.weight, 0.1, (16, 16))
    _prune(net.conv.weight, 0.1)
    choice = {"fc1": "native_bsr", "conv": "native_csr", "fc2": "cuda_bsr"}
    replayed = apply_kernels(net, choice)
    kernels = deployed_kernels(replayed)
    if native.available():
        assert kernels["fc1"] == "native_bsr" and kernels["conv"] == "native_csr"
    assert kernels["fc2"] == "dense"  # a CUDA kernel does not apply on CPU
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert_close(replayed(x), net(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="kernels: unknown kernel"):
        apply_kernels(net, {"fc1": "warp_drive"})
    with pytest.raises(ValueError, match="no Linear/Conv2d layer"):
        apply_kernels(net, {"nope": "dense"})


def test_torchvision_resnet_and_timm_vit_deploy_equal() -> None:
    import timm

    torch.manual_seed(10)
    resnet = torchvision.models.resnet18(num_classes=10).eval()
    for module in resnet.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            _prune(module.weight, 0.1)
    x = torch.randn(1, 3, 64, 64)
    deployed = deploy(resnet, x)
    with torch.no_grad():
        assert_close(deployed(x), resnet(x), rtol=1e-3, atol=1e-4)
    vit = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10, pretrained=False
    ).eval()
    for name, module in vit.named_modules():
        if name.startswith("blocks.") and isinstance(module, nn.Linear):
            _prune(module.weight, 0.2, (16, 16))
    x = torch.randn(2, 3, 32, 32)
    deployed = deploy(vit, x)
    with torch.no_grad():
        assert_close(deployed(x), vit(x), rtol=1e-3, atol=1e-4)
    assert deployed.deploy_report["totals"]["kernels"].get("dense", 0) < 25


def test_bad_input_is_named() -> None:
    net = _Net()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="device: unknown device"):
        deploy(net, x, device="tpu-9000")
    with pytest.raises(ValueError, match="example_input"):
        deploy(net, torch.randn(1, 5))
    with pytest.raises(ValueError, match="example_input: expected a tensor"):
        deploy(net, [1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_speedup"):
        deploy(net, x, min_speedup=0.5)
    with pytest.raises(ValueError, match="time_budget_ms"):
        deploy(net, x, time_budget_ms=0)
    from spartan_core import Sparsifier, SparsifierConfig

    Sparsifier(net, SparsifierConfig(target=0.5), total_steps=10)
    with pytest.raises(ValueError, match="finalize"):
        deploy(net, x)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            deploy(nn.Linear(4, 4), torch.randn(1, 4), device="cuda")


def test_every_kernel_is_named_once() -> None:
    names = [k.name for k in KERNELS]
    assert len(names) == len(set(names)) and "dense" not in names
    assert cost_models.deploy is deploy


@needs_cuda
@pytest.mark.parametrize("kernel", ["cuda_bsr", "semi_structured"])
def test_cuda_kernels_equal_dense(kernel: str) -> None:
    torch.manual_seed(11)
    dtype = torch.float16
    layer = nn.Linear(256, 512).cuda().to(dtype).eval()
    if kernel == "cuda_bsr":
        _prune(layer.weight, 0.2, (32, 32))
    else:
        _nm(layer.weight, 2, 4)
    deployed = deploy(nn.Sequential(layer), torch.randn(128, 256, device="cuda", dtype=dtype))
    (row,) = deployed.deploy_report["layers"]
    assert kernel in row["candidates_ms"] or kernel in row["rejected"]
    assert kernel not in row["rejected"], row["rejected"]
