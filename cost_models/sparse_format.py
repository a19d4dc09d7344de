"""The compressed sparse model file: only kept weights plus compact indices, in safetensors.

``save_sparse(model, path)`` writes every Linear / Conv2d weight of a finalized model in the
encoding of its sparsity structure, read off its zeros (``cost_models.layouts``), and every
other state-dict entry (biases, norms, buffers, other parameters) as it is.
``load_sparse(path)`` rebuilds the dense-with-zeros weights, the architecture and, when the
file carries a deployment measured on the same kind of device, the deployed model.

Weights are viewed as the (R, C) = (out, in) matrix, conv kernels flattened into ``in``
(in/groups * kh * kw), row-major, as everywhere in the project. For a weight ``W`` stored
under the state-dict key ``K`` the file holds (format ``spartan.sparse``, version 1):

===============  ==================================================================
encoding         tensors
===============  ==================================================================
``dense``        ``K``: the weight as it is (no zeros, or no encoding is smaller)
``bitmask``      ``K:values`` (nnz,) the nonzero weights in row-major order;
                 ``K:bitmask`` uint8 (ceil(R * C / 8),): bit i of the flattened
                 matrix (1 = nonzero) is bit ``i % 8`` (least significant first) of
                 byte ``i // 8``, i.e. ``np.packbits(bits, bitorder="little")``
``blocks``       ``K:values`` (nnzb, r, c) the kept r x c blocks in row-major block
                 order; ``K:block_row_ptr`` int32 (R / r + 1,) and ``K:block_cols``
                 int32 (nnzb,): block-CSR (BSR) coordinates of those blocks. Also
                 unstructured weights below ~1/32 density as 1 x 1 blocks (CSR),
                 where that is smaller than the bitmask (a layer pruned away)
``nm``           ``K:values`` (R, C / m, n): n slots per group of m consecutive inputs;
                 ``K:nm_index`` uint8: each slot's position in its group (0..m-1),
                 ceil(log2 m) bits per slot (2 for m = 4) packed little-endian as
                 above, in the order of ``values``. A group with fewer than n
                 nonzeros fills its slots with zeros at unused positions
===============  ==================================================================

The string metadata (safetensors' header; the last three values JSON) holds ``format``
(``spartan.sparse``), ``version`` (``1``), ``layers`` (per weight key: ``module``, ``shape``,
``dtype``, ``layout`` as ``Layout.to_dict()``, ``encoding``, ``block`` / ``nm`` where they
apply), and optionally ``architecture`` (``cost_models.architectures.Architecture``:
source, name, num_classes, input_size) and ``deployment`` (``device_type``, ``device``,
``kernels`` per layer, and facts of the measurement: ``threads``, ``dtype``, ``batch_size``,
``dense_ms``, ``deployed_ms``, ``speedup``).

Rebuilt weights equal the saved ones exactly: nonzero values bit for bit, zeros as +0.0.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from cost_models.architectures import Architecture, build
from cost_models.deployment import apply_kernels
from cost_models.layouts import Layout, block_mask, detect_layout
from spartan_core.device import resolve_device

logger = logging.getLogger(__name__)

FORMAT = "spartan.sparse"
VERSION = 1
_SEP = ":"  # between a state-dict key and the name of one of its encoded parts


# --------------------------------------------------------------------------------- public


def save_sparse(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    architecture: Architecture | Mapping[str, Any] | None = None,
    deployment: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``model``'s state dict as a compressed sparse safetensors file.

    Args:
        model: a finalized model (plain modules, zeros in the weights; no parametrizations).
        path: the file to write (written to a temporary name and renamed).
        architecture: what ``load_sparse(path)`` builds when given no model: an
            ``Architecture`` or its ``to_dict()``; None leaves it out (loading then needs a
            model).
        deployment: a ``cost_models.deploy`` report (``deploy_report``), or a mapping with
            ``device`` and ``kernels`` ({layer name: kernel}); ``load_sparse`` replays its
            kernels on the same kind of device. None leaves it out.

    Returns:
        the per-layer metadata written (``{weight key: {...}}``).

    Raises:
        ValueError: for a model that still carries masks, or a bad architecture/deployment.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ValueError("model: it still carries masks; call Sparsifier.finalize() first")
    metadata: dict[str, str] = {"format": FORMAT, "version": str(VERSION)}
    if architecture is not None:
        arch = (
            architecture
            if isinstance(architecture, Architecture)
            else Architecture.from_dict(architecture)
        )
        metadata["architecture"] = json.dumps(arch.to_dict())
    if deployment is not None:
        metadata["deployment"] = json.dumps(_deployment_record(deployment))
    tensors, layers = encode_state_dict(model)
    metadata["layers"] = json.dumps(layers)
    _write(Path(path), tensors, metadata)
    return layers


def load_sparse(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    *,
    device: str | torch.device | None = None,
    apply_deployment: bool = True,
) -> nn.Module:
    """Rebuild a model from a file written by ``save_sparse``.

    The dense-with-zeros weights are rebuilt exactly and loaded strictly (every key of the
    model, nothing else). When the file carries a deployment measured on the kind of device
    the model is loaded to (``cpu`` / ``cuda``), its kernel per layer is applied with
    ``cost_models.apply_kernels``, so the result runs deployed at once (a copy of ``model``,
    in eval mode; kernels that cannot run here leave their layer dense). On another kind of
    device, or with ``apply_deployment=False``, the plain model is returned.

    Args:
        path: a ``.sparse.safetensors`` file.
        model: the architecture to load into (in place); None builds the one named in the
            file's metadata (timm / torchvision, random init, then loaded).
        device: where to put the model (``cpu``, ``cuda``, ``cuda:1``...); default ``cpu``.
        apply_deployment: set False for the plain modules even where a deployment applies.

    Returns:
        the loaded model: deployed (with ``deploy_report`` set to the file's deployment
        record) or plain.

    Raises:
        ValueError: for a missing or unreadable file, a file not in this format, a model that
            does not match the file's weights, an architecture that cannot be built, or an
            unknown device.
    """
    target = resolve_device("cpu" if device is None else device)
    state, metadata = read_sparse(path)
    if model is None:
        if "architecture" not in metadata:
            raise ValueError(
                f"architecture: {Path(path).name!r} names no architecture; pass model="
            )
        model = build(Architecture.from_dict(metadata["architecture"]))
    elif not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    load_strict(model, state, Path(path).name)
    model.to(target)
    deployment = metadata.get("deployment")
    if not apply_deployment or not deployment:
        return model
    if deployment.get("device_type") != target.type:
        logger.info(
            "load_sparse: deployment measured on %s, loading to %s: plain model",
            deployment.get("device_type"),
            target.type,
        )
        return model
    deployed = apply_kernels(model, deployment.get("kernels", {}), device=target)
    deployed.deploy_report = deployment
    return deployed


def read_sparse(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The dense state dict (CPU) and the parsed metadata of a ``save_sparse`` file.

    Raises:
        ValueError: for a missing or unreadable file, or one not in this format.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path: no file {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            raw_meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"path: {path.name!r} is not a safetensors file: {exc}") from exc
    metadata = _parse_metadata(raw_meta, path.name)
    return decode_state_dict(tensors, metadata["layers"], path.name), metadata


def load_strict(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """``model.load_state_dict(state)`` with every key and shape checked first.

    Raises:
        ValueError: ``model: the weights of {source} do not match the architecture: ...``
            listing missing and unexpected keys and shape mismatches.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} (file {list(state[k].shape)}, model {list(own[k].shape)})"
        for k in sorted(set(own) & set(state))
        if own[k].shape != state[k].shape
    ]
    if missing or unexpected or shapes:
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shapes", shapes)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                problems.append(f"{label} {', '.join(keys[:5])}{more}")
        raise ValueError(
            f"model: the weights of {source!r} do not match the architecture: "
            + "; ".join(problems)
        )
    model.load_state_dict(state, strict=True)


def encode_state_dict(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors to store and the per-layer metadata (see the module docstring)."""
    state = model.state_dict()
    weights = _linear_conv_weights(model, state)
    tensors: dict[str, Tensor] = {}
    layers: dict[str, Any] = {}
    for key, value in state.items():
        plain = value.detach().to("cpu")
        module = weights.get(key)
        if module is None or not plain.is_floating_point():
            tensors[key] = plain.contiguous().clone()
            continue
        matrix = plain.reshape(plain.shape[0], -1)
        layout = detect_layout(matrix)
        encoding, parts = _encode(matrix, layout)
        if encoding != "dense" and _nbytes(parts) >= plain.numel() * plain.element_size():
            encoding, parts = "dense", {}  # the compact form would not be smaller
        if encoding == "dense":
            tensors[key] = plain.contiguous().clone()
        else:
            tensors.update({f"{key}{_SEP}{part}": t.contiguous() for part, t in parts.items()})
        block = layout.block if layout.kind == "blocks" else (1, 1)
        layers[key] = {
            "module": module,
            "shape": list(plain.shape),
            "dtype": str(plain.dtype).removeprefix("torch."),
            "layout": layout.to_dict(),
            "encoding": encoding,
            **({"block": list(block)} if encoding == "blocks" else {}),
            **({"nm": list(layout.nm)} if encoding == "nm" and layout.nm else {}),
        }
    return tensors, layers


def decode_state_dict(
    tensors: Mapping[str, Tensor], layers: Mapping[str, Any], source: str = "file"
) -> dict[str, Tensor]:
    """The dense state dict from stored tensors and per-layer metadata.

    Raises:
        ValueError: naming ``source`` and the tensor for a missing or inconsistent part.
    """
    parts: dict[str, dict[str, Tensor]] = {}
    state: dict[str, Tensor] = {}
    for name, tensor in tensors.items():
        key, sep, part = name.rpartition(_SEP)
        if sep and key in layers:
            parts.setdefault(key, {})[part] = tensor
        else:
            state[name] = tensor
    for key, info in layers.items():
        encoding = info.get("encoding")
        if encoding == "dense":
            if key not in state:
                raise ValueError(f"{source}: tensor {key!r} is missing")
            continue
        try:
            shape = [int(v) for v in info["shape"]]
            dtype = getattr(torch, str(info["dtype"]))
            have = parts.get(key, {})
            if encoding not in _DECODERS:
                raise ValueError(f"unknown encoding {encoding!r}")
            matrix = _DECODERS[encoding](have, info, (shape[0], math.prod(shape[1:])), dtype)
        except (KeyError, TypeError, AttributeError, RuntimeError, ValueError) as exc:
            raise ValueError(f"{source}: cannot rebuild {key!r}: {exc}") from exc
        state[key] = matrix.reshape(shape)
    return state


# ------------------------------------------------------------------------------ encodings


def _encode(matrix: Tensor, layout: Layout) -> tuple[str, dict[str, Tensor]]:
    if layout.kind == "blocks":
        return "blocks", _encode_blocks(matrix, layout.block)
    if layout.kind == "nm" and layout.nm is not None:
        return "nm", _encode_nm(matrix, layout.nm)
    if layout.kind == "unstructured":
        keep = matrix != 0
        bitmask = {"values": matrix[keep], "bitmask": pack_bits(keep.reshape(-1), 1)}
        csr = _encode_blocks(matrix, (1, 1))
        if _nbytes(csr) < _nbytes(bitmask):  # below ~1/32 density, e.g. a layer pruned away
            return "blocks", csr
        return "bitmask", bitmask
    return "dense", {}


def _encode_blocks(matrix: Tensor, block: tuple[int, int]) -> dict[str, Tensor]:
    r, c = block
    rows, cols = matrix.shape
    kept = block_mask(matrix, block)  # (R/r, C/c)
    coords = kept.nonzero()  # (nnzb, 2), row-major
    grid = matrix.reshape(rows // r, r, cols // c, c).permute(0, 2, 1, 3)  # (R/r, C/c, r, c)
    row_ptr = torch.zeros(rows // r + 1, dtype=torch.int32)
    row_ptr[1:] = kept.sum(dim=1).cumsum(0)
    return {
        "values": grid[coords[:, 0], coords[:, 1]],  # (nnzb, r, c)
        "block_row_ptr": row_ptr,
        "block_cols": coords[:, 1].to(torch.int32),
    }


def _encode_nm(matrix: Tensor, nm: tuple[int, int]) -> dict[str, Tensor]:
    n, m = nm
    rows, cols = matrix.shape
    groups = matrix.reshape(rows, cols // m, m)
    # nonzeros first (stable: in position order), then unused zero positions as padding
    order = torch.argsort((groups == 0).to(torch.int8), dim=2, stable=True)[..., :n]
    index = order.sort(dim=2).values  # (R, C/m, n)
    return {
        "values": groups.gather(2, index),
        "nm_index": pack_bits(index.reshape(-1), _index_bits(m)),
    }


def _decode_bitmask(
    parts: Mapping[str, Tensor], info: Mapping[str, Any], shape: tuple[int, int], dtype: Any
) -> Tensor:
    numel = shape[0] * shape[1]
    keep = unpack_bits(parts["bitmask"], 1, numel).bool()
    values = parts["values"]
    if values.numel() != int(keep.sum()):
        raise ValueError(f"{values.numel()} values for {int(keep.sum())} bits set")
    out = torch.zeros(numel, dtype=dtype)
    out[keep] = values.to(dtype)
    return out.reshape(shape)


def _decode_blocks(
    parts: Mapping[str, Tensor], info: Mapping[str, Any], shape: tuple[int, int], dtype: Any
) -> Tensor:
    r, c = (int(v) for v in info["block"])
    rows, cols = shape
    row_ptr = parts["block_row_ptr"].long()
    block_cols = parts["block_cols"].long()
    values = parts["values"]
    if row_ptr.numel() != rows // r + 1 or values.shape != (block_cols.numel(), r, c):
        raise ValueError(f"block indices do not fit a {rows}x{cols} matrix of {r}x{c} blocks")
    block_rows = torch.repeat_interleave(torch.arange(rows // r), row_ptr.diff())
    grid = torch.zeros(rows // r, cols // c, r, c, dtype=dtype)
    grid[block_rows, block_cols] = values.to(dtype)
    return grid.permute(0, 2, 1, 3).reshape(rows, cols)


def _decode_nm(
    parts: Mapping[str, Tensor], info: Mapping[str, Any], shape: tuple[int, int], dtype: Any
) -> Tensor:
    n, m = (int(v) for v in info["nm"])
    rows, cols = shape
    values = parts["values"]
    if values.shape != (rows, cols // m, n):
        raise ValueError(f"values of shape {tuple(values.shape)}, expected {(rows, cols // m, n)}")
    index = unpack_bits(parts["nm_index"], _index_bits(m), values.numel()).long()
    groups = torch.zeros(rows, cols // m, m, dtype=dtype)
    groups.scatter_(2, index.reshape(values.shape), values.to(dtype))
    return groups.reshape(rows, cols)


_DECODERS = {"bitmask": _decode_bitmask, "blocks": _decode_blocks, "nm": _decode_nm}


def pack_bits(values: Tensor, bits: int) -> Tensor:
    """Pack non-negative integers (< 2**bits) into uint8, ``bits`` each, little-endian.

    Value j occupies bits j * bits .. j * bits + bits - 1 of the stream (least significant
    bit first), and bit i of the stream is bit ``i % 8`` of byte ``i // 8``: for bits = 1
    exactly ``np.packbits(values, bitorder="little")``.
    """
    flat = values.reshape(-1).to(torch.int64)
    stream = ((flat[:, None] >> torch.arange(bits)) & 1).reshape(-1)  # (len * bits,)
    pad = (-stream.numel()) % 8
    stream = torch.cat([stream, stream.new_zeros(pad)]).reshape(-1, 8)
    return (stream << torch.arange(8)).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: Tensor, bits: int, count: int) -> Tensor:
    """The ``count`` integers ``pack_bits`` packed, as int64 (count,)."""
    if packed.dtype != torch.uint8 or packed.numel() * 8 < count * bits:
        raise ValueError(f"packed indices: expected {math.ceil(count * bits / 8)} uint8 bytes")
    stream = (packed.reshape(-1, 1).to(torch.int64) >> torch.arange(8)) & 1
    stream = stream.reshape(-1)[: count * bits].reshape(count, bits)
    return (stream << torch.arange(bits)).sum(dim=1)


def _index_bits(m: int) -> int:
    return max(1, math.ceil(math.log2(m)))


# ------------------------------------------------------------------------------ internals


def _linear_conv_weights(model: nn.Module, state: Mapping[str, Tensor]) -> dict[str, str]:
    """``{state-dict key of a Linear/Conv2d weight: module name}``."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            key = f"{name}.weight" if name else "weight"
            if key in state and state[key].dim() >= 2:
                out[key] = name
    return out


def _nbytes(parts: Mapping[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in parts.values())


def _deployment_record(deployment: Mapping[str, Any]) -> dict[str, Any]:
    """What a file keeps of a deployment: the device kind and the kernel per layer."""
    if not isinstance(deployment, Mapping) or "device" not in deployment:
        raise ValueError("deployment: expected a deploy_report with 'device' and 'layers'")
    if "kernels" in deployment:
        kernels = dict(deployment["kernels"])
    else:
        kernels = {row["name"]: row["kernel"] for row in deployment.get("layers", [])}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in kernels.items()):
        raise ValueError("deployment: kernels must map layer names to kernel names")
    try:
        device = torch.device(str(deployment["device"]))
    except RuntimeError:
        raise ValueError(f"deployment.device: unknown device {deployment['device']!r}") from None
    totals = deployment.get("totals") or {}
    record = {
        "device_type": device.type,
        "device": str(device),
        "kernels": kernels,
    }
    for key in ("threads", "dtype", "batch_size", "input_shape"):
        if key in deployment:
            record[key] = deployment[key]
    for key in ("dense_ms", "deployed_ms", "speedup"):
        if key in totals:
            record[key] = totals[key]
        elif key in deployment:
            record[key] = deployment[key]
    return record


def _parse_metadata(raw: Mapping[str, str], source: str) -> dict[str, Any]:
    if raw.get("format") != FORMAT:
        raise ValueError(
            f"path: {source!r} is not a {FORMAT} file (metadata format "
            f"{raw.get('format')!r}); plain state dicts load with safetensors.torch.load_file"
        )
    version = raw.get("version")
    if version != str(VERSION):
        raise ValueError(f"path: {source!r} is {FORMAT} version {version!r}; this reads {VERSION}")
    out: dict[str, Any] = {}
    for key in ("layers", "architecture", "deployment"):
        if key not in raw:
            continue
        try:
            out[key] = json.loads(raw[key])
        except json.JSONDecodeError as exc:
            raise ValueError(f"path: {source!r} has malformed {key} metadata: {exc}") from exc
    if not isinstance(out.get("layers"), dict):
        raise ValueError(f"path: {source!r} has no layers metadata")
    return out


def _write(path: Path, tensors: Mapping[str, Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    data = save(dict(tensors), metadata=metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
