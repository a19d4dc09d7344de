"""Deployed sparse inference against dense, per layer and end to end, measured in one run.

Per layer (batch 1): ViT-B MLP shapes (768 -> 3072 and 3072 -> 768 at 197 tokens) and a
ResNet-50 3x3 conv (128 -> 128 at 28x28), at 90% and 95% unstructured, 75% and 90% 16x16
blocks and 2:4; each kernel deployment can choose from (ours, torch's CSR/BSR) and the one
``cost_models.deploy`` chose, as speed-ups over the dense layer (torch's MKL/oneDNN kernels).
End to end: timm ``vit_small_patch16_224`` (90% 16x16 blocks in ``blocks.*``, batch 1 and 8)
and torchvision ``resnet50`` (95% unstructured, batch 1) at 224x224: the dense model against
``cost_models.deploy``'s copy, the file sizes of ``model.safetensors`` and
``model.sparse.safetensors``, and the ``profiled`` cost model's predicted latency against the
measured one. Weights are random (a pruned random model runs as fast as a trained one); every
selected layer keeps exactly the stated fraction (magnitude, per layer).

Timings are medians over ``--rounds`` interleaved rounds (dense and sparse alternate), each
round itself a median of several runs, so drifting load on the shared machine hits both.

    .venv/bin/python benchmarks/inference.py --threads 2               # everything, ~15 min
    .venv/bin/python benchmarks/inference.py --threads 2 --quick       # targets only, ~4 min
    .venv/bin/python benchmarks/inference.py --only layers --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import cost_models
from cost_models.deployment import deploy, sparse_candidates
from cost_models.kernels import median_ms, no_attention_fastpath
from cost_models.layouts import detect_layout, weight_matrix
from spartan_core import Sparsifier, SparsifierConfig, find_targets, maskable_targets

STRUCTURES: dict[str, dict[str, Any]] = {
    "90% unstructured": {"density": 0.10},
    "95% unstructured": {"density": 0.05},
    "75% 16x16 blocks": {"density": 0.25, "block": (16, 16)},
    "90% 16x16 blocks": {"density": 0.10, "block": (16, 16)},
    "2:4": {"nm": (2, 4)},
}
QUICK_STRUCTURES = ("90% unstructured", "75% 16x16 blocks", "90% 16x16 blocks", "2:4")


def prune(
    model: nn.Module,
    *,
    density: float = 1.0,
    block: tuple[int, int] = (1, 1),
    nm: tuple[int, int] | None = None,
    include: tuple[str, ...] = (),
) -> nn.Module:
    """Keep exactly ``density`` of every selected layer (largest |w|), the rest dense."""
    if nm is not None:
        for t in find_targets(model, include, ()):
            matrix = model.get_submodule(t.module_name).weight.data
            groups = matrix.reshape(t.shape[0], -1, nm[1])
            order = groups.abs().argsort(dim=2, descending=True)
            keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, order[..., : nm[0]], True)
            groups.mul_(keep)
        return model
    targets = find_targets(model, include, ())
    selected = {t.name for t in targets}
    masked = sum(t.numel for t in targets)
    dense = sum(t.numel for t in maskable_targets(model) if t.name not in selected)
    config = SparsifierConfig(
        method="magnitude",
        target=(density * masked + dense) / (masked + dense),
        distribution="uniform",
        block_shape=block,
        include=include,
        warmup_frac=0.0,
        finetune_frac=0.0,
    )
    return Sparsifier(model, config, total_steps=1).finalize()


def interleaved(
    fns: dict[str, Callable[[], object]], rounds: int, repeats: int
) -> dict[str, float]:
    """Median over rounds of each function's median time (ms), the functions alternating."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(median_ms(fn, repeats=repeats, warmup=1))
    return {name: statistics.median(values) for name, values in samples.items()}


def bench_layers(args: argparse.Namespace, structures: list[str]) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    layers = {
        "linear 768->3072 @197": (lambda: nn.Linear(768, 3072), (1, 197, 768)),
        "linear 3072->768 @197": (lambda: nn.Linear(3072, 768), (1, 197, 3072)),
        "conv3x3 128->128 @28x28": (
            lambda: nn.Conv2d(128, 128, 3, padding=1, bias=False),
            (1, 128, 28, 28),
        ),
    }
    rows = []
    print("\n## Per layer (batch 1): speed-up over the dense layer\n")
    print("| layer | structure | dense ms | deployed | x dense | native_bsr | native_csr | "
          "torch CSR/BSR |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for lname, (make, shape) in layers.items():
        for sname in structures:
            layer = make().eval()
            prune(nn.Sequential(layer), **STRUCTURES[sname])
            x = torch.randn(shape)
            with torch.inference_mode():
                layout = detect_layout(weight_matrix(layer))
                fns: dict[str, Callable[[], object]] = {"dense": lambda m=layer, x=x: m(x)}
                for kname, module in sparse_candidates(layer, layout, torch.device("cpu")):
                    fns[kname] = lambda m=module, x=x: m(x)
                times = interleaved(fns, args.rounds, args.repeats)
                chosen = deploy(nn.Sequential(layer), x).deploy_report["layers"][0]["kernel"]
            ratio = {k: times["dense"] / v for k, v in times.items()}
            row = {"layer": lname, "structure": sname, "dense_ms": times["dense"],
                   "kernel": chosen, "speedup": ratio.get(chosen, 1.0),
                   "ratios": ratio}  # fmt: skip
            rows.append(row)
            cells = [f"{ratio[k]:.2f}x" if k in ratio else "-"
                     for k in ("native_bsr", "native_csr", "torch_sparse")]  # fmt: skip
            print(f"| {lname} | {sname} | {times['dense']:.3f} | {chosen} | "
                  f"{row['speedup']:.2f}x | {' | '.join(cells)} |", flush=True)  # fmt: skip
    return rows


def _models() -> dict[str, tuple[Callable[[], nn.Module], tuple[str, ...]]]:
    import timm
    import torchvision

    return {
        "vit_small_patch16_224": (
            lambda: timm.create_model("vit_small_patch16_224", pretrained=False),
            ("blocks.*",),
        ),
        "resnet50": (lambda: torchvision.models.resnet50(), ()),
    }


def bench_models(args: argparse.Namespace) -> list[dict[str, Any]]:
    cases = [
        ("vit_small_patch16_224", "90% 16x16 blocks", 1),
        ("vit_small_patch16_224", "90% 16x16 blocks", 8),
        ("resnet50", "95% unstructured", 1),
    ]
    if not args.quick:
        cases += [
            ("vit_small_patch16_224", "75% 16x16 blocks", 1),
            ("vit_small_patch16_224", "90% unstructured", 1),
            ("vit_small_patch16_224", "2:4", 1),
            ("resnet50", "90% unstructured", 1),
            ("resnet50", "90% 16x16 blocks", 1),
        ]
    models = _models()
    rows = []
    print("\n## End to end (224x224): deployed against dense\n")
    print("| model | structure | batch | dense ms | deployed ms | x dense | kernels | "
          "file MB dense | sparse | x dense | profiled predicted ms | error |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for mname, sname, batch in cases:
        torch.manual_seed(0)
        make, include = models[mname]
        structure = STRUCTURES[sname]
        model = make().eval()
        predicted = None
        if args.profiled and batch == 1 and "nm" not in structure:
            profiled = cost_models.get(
                "profiled", input_size=(3, 224, 224), batch_size=batch, repeats=5
            )
            targets = find_targets(model, include, ())
            profiled.layer_costs(model, targets, structure.get("block", (1, 1)))
        model = prune(model, include=include, **structure).eval()
        x = torch.randn(batch, 3, 224, 224)
        start = time.perf_counter()
        deployed = deploy(model, x)
        deploy_s = time.perf_counter() - start
        report = deployed.deploy_report
        with torch.inference_mode(), no_attention_fastpath():
            times = interleaved(
                {"dense": lambda m=model, x=x: m(x), "deployed": lambda m=deployed, x=x: m(x)},
                args.rounds,
                max(2, args.repeats // (4 * batch)),
            )
        if args.profiled and batch == 1 and "nm" not in structure:
            kept = {}
            block = structure.get("block", (1, 1))
            for t in targets:
                matrix = weight_matrix(model.get_submodule(t.module_name))
                kept[t.name] = int((matrix.reshape(matrix.shape[0] // block[0], block[0],
                                    matrix.shape[1] // block[1], block[1]) != 0)
                                   .any(3).any(1).sum())  # fmt: skip
            predicted = profiled.model_latency_ms(kept)
        sizes = _file_sizes(model)
        row = {
            "model": mname,
            "structure": sname,
            "batch": batch,
            "dense_ms": times["dense"],
            "deployed_ms": times["deployed"],
            "speedup": times["dense"] / times["deployed"],
            "kernels": report["totals"]["kernels"],
            "deploy_s": deploy_s,
            "predicted_ms": predicted,
            "predicted_error": None if predicted is None else predicted / times["deployed"] - 1,
            **sizes,
        }
        rows.append(row)
        kernels = ", ".join(f"{k} {n}" for k, n in sorted(report["totals"]["kernels"].items()))
        size_cells = (
            f"{sizes['dense_mb']:.1f} | {sizes['sparse_mb']:.1f} | {sizes['size_ratio']:.3f}x"
            if sizes
            else "- | - | -"
        )
        pred = "- | -" if predicted is None else f"{predicted:.1f} | {row['predicted_error']:+.1%}"
        print(f"| {mname} | {sname} | {batch} | {times['dense']:.1f} | "
              f"{times['deployed']:.1f} | {row['speedup']:.2f}x | {kernels} | {size_cells} | "
              f"{pred} |", flush=True)  # fmt: skip
    return rows


def _file_sizes(model: nn.Module) -> dict[str, float]:
    save_sparse = getattr(cost_models, "save_sparse", None)
    if save_sparse is None:
        return {}
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        dense_path, sparse_path = (
            Path(tmp, "model.safetensors"),
            Path(tmp, "model.sparse.safetensors"),
        )
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(dense_path))
        save_sparse(model, sparse_path)
        dense, sparse = dense_path.stat().st_size, sparse_path.stat().st_size
    return {"dense_mb": dense / 1e6, "sparse_mb": sparse / 1e6, "size_ratio": sparse / dense}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--repeats", type=int, default=20, help="runs per round (median)")
    parser.add_argument("--quick", action="store_true", help="the issue's targets only")
    parser.add_argument("--only", choices=("layers", "models"), default=None)
    parser.add_argument("--no-profiled", dest="profiled", action="store_false",
                        help="skip the profiled cost model's prediction")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{torch.get_num_threads()} thread(s), torch {torch.__version__}, "
          f"native kernels: {cost_models.native.available()}")  # fmt: skip
    structures = list(QUICK_STRUCTURES if args.quick else STRUCTURES)
    out: dict[str, Any] = {"threads": torch.get_num_threads()}
    if args.only in (None, "layers"):
        out["layers"] = bench_layers(args, structures)
    if args.only in (None, "models"):
        out["models"] = bench_models(args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
