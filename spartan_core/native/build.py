"""Compiling a C source into a cached shared library and loading it with ctypes.

Used by :mod:`spartan_core.native` (the training kernels) and :mod:`cost_models.native` (the
inference kernels). The library is built with the system C compiler (``$CC``, else ``cc``)
into ``$SPARTAN_NATIVE_CACHE`` (default ``~/.cache/spartan``), keyed by a hash of the source,
the flags and the CPU, and reused by every later process; flag sets are tried in order, so a
compiler without OpenMP or ``-march=native`` still gets a build. ``SPARTAN_NATIVE=0`` turns
every native kernel off (the callers then run their PyTorch code).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


def switched_on() -> bool:
    """Whether ``SPARTAN_NATIVE`` allows native kernels (default: yes)."""
    return os.environ.get("SPARTAN_NATIVE", "1").strip().lower() not in {"0", "false", "no"}


def cache_dir() -> Path:
    """Where built libraries are kept."""
    configured = os.environ.get("SPARTAN_NATIVE_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spartan"


def cpu_signature() -> str:
    """The machine and its CPU flags: a library built with -march=native is only for them."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return platform.machine() + flags


def build(source: Path, flag_sets: Sequence[Sequence[str]], libs: Sequence[str]) -> Path:
    """The shared library for the first flag set that compiles (cached by content hash).

    Raises:
        OSError: when no flag set compiles, with the compiler's messages.
    """
    compiler = os.environ.get("CC", "cc")
    code = source.read_bytes()
    failures = []
    for flags in flag_sets:
        key = hashlib.sha256(
            b"\0".join([code, " ".join([*flags, *libs]).encode(), cpu_signature().encode()])
        ).hexdigest()[:16]
        target = cache_dir() / f"spartan_{source.stem}-{key}.so"
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        # build beside the target, then rename: concurrent processes never load a partial file
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            run = subprocess.run(
                [compiler, *flags, str(source), "-o", tmp, *libs], capture_output=True, text=True
            )
            if run.returncode == 0:
                os.replace(tmp, target)
                return target
            failures.append(f"{' '.join(flags)}: {run.stderr.strip()[-500:]}")
        except OSError as exc:  # no compiler at all
            failures.append(f"{compiler}: {exc}")
            break
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    raise OSError(f"could not compile {source.name}:\n" + "\n".join(failures))


def load(
    source: Path,
    flag_sets: Sequence[Sequence[str]],
    signatures: Mapping[str, tuple[Sequence[type], type | None]],
    libs: Sequence[str] = ("-lm",),
) -> ctypes.CDLL | None:
    """Build (if needed) and load ``source``, declaring each function's ctypes signature.

    Returns None, with one warning, when it cannot be built or loaded.
    """
    try:
        lib = ctypes.CDLL(str(build(source, flag_sets, libs)))
    except OSError as exc:  # no compiler, a failed build or an unloadable library
        logger.warning("%s: native kernels unavailable, using PyTorch code: %s", source.name, exc)
        return None
    for name, (argtypes, restype) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes = list(argtypes)
        fn.restype = restype
    return lib
