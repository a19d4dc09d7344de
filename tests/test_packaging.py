"""The wheel: built from this tree and installed into a fresh virtual environment, it carries
the example specs, the migrations and the licence, and ``spartan demo`` runs from it.

The fresh environment gets this environment's third-party packages through a ``.pth`` line
added after the wheel is installed (so nothing is downloaded, torch is not reinstalled, and
pip never sees the editable install of this checkout); its ``spartan`` is the wheel's.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _source_tree(dest: Path) -> Path:
    """The files git would commit (tracked and untracked, not ignored), symlinks kept."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        src, dst = ROOT / name, dest / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = _source_tree(tmp / "src")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         str(src), "-w", str(tmp / "dist")],
        check=True,
        timeout=600,
    )  # fmt: skip
    [built] = (tmp / "dist").glob("spartan-*.whl")
    return built


def test_the_wheel_carries_examples_migrations_and_licence(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = next(z.read(n) for n in names if n.endswith(".dist-info/METADATA")).decode()
    assert "spartan/examples/quickstart.yaml" in names
    assert "spartan/migrations/versions/0001_initial.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in metadata
    # the library's own dependencies; the service's behind the [service] extra
    required = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    core = {
        line.split()[1].split("=")[0].split(">")[0] for line in required if "extra ==" not in line
    }
    assert core == {"torch", "torchvision", "timm", "numpy", "safetensors"}
    assert any("fastapi" in line and 'extra == "service"' in line for line in required)


@pytest.mark.slow
def test_spartan_demo_runs_from_the_wheel(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         str(wheel)],
        check=True,
        timeout=300,
    )  # fmt: skip
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # this environment's packages (torch, fastapi, ...) after the wheel's own
    Path(purelib, "zz_spartan_test_deps.pth").write_text(
        "\n".join(p for p in site.getsitepackages() if p != purelib) + "\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARTAN_", "PYTHON"))}
    env.update({"SPARTAN_HOME": str(tmp_path / "home"), "COLUMNS": "200"})
    probe = subprocess.run(
        [str(python), "-c", textwrap.dedent("""
            import spartan, cli.serve, yaml
            from spartan.spec import JobSpec
            print(spartan.__file__)
            print(cli.serve.QUICKSTART)
            JobSpec.model_validate(yaml.safe_load(cli.serve.QUICKSTART.read_text()))
        """)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    module, quickstart = probe.stdout.split()
    assert module.startswith(purelib) and quickstart.startswith(purelib)

    version = subprocess.run(
        [str(venv / "bin" / "spartan"), "--version"], capture_output=True, text=True, env=env,
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert version.returncode == 0 and version.stdout.startswith("spartan "), version.stderr

    # the demo itself, on a spec small enough for a test (the quickstart takes minutes)
    spec = yaml.safe_load(Path(quickstart).read_text())
    spec.update(
        name="wheel-demo",
        model={**spec["model"], "input_size": [3, 16, 16]},
        training={**spec["training"], "epochs": 1},
    )
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(spec))
    demo = subprocess.run(
        [str(venv / "bin" / "spartan"), "demo", str(tiny)], capture_output=True, text=True,
        env=env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    log = tmp_path / "home" / "demo.log"
    assert demo.returncode == 0, (
        demo.stdout[-3000:],
        log.read_text()[-3000:] if log.exists() else "",
    )
    assert "succeeded" in demo.stdout and "service stopped" in demo.stdout


SERVICE_ONLY = (
    "fastapi", "starlette", "uvicorn", "multipart", "httpx", "celery", "kombu", "redis",
    "sqlalchemy", "alembic", "psycopg", "prometheus_client", "typer", "rich", "pydantic",
    "pydantic_settings", "yaml", "sklearn", "onnx", "onnxscript", "onnxruntime",
)  # fmt: skip


def test_the_library_runs_without_the_service_extra() -> None:
    """spartan_core and cost_models import nothing of the [service] extra: train a few steps
    and plan with every service-only package made unimportable."""
    code = textwrap.dedent(f"""
        import sys
        for name in {SERVICE_ONLY!r}:
            sys.modules[name] = None  # import fails, find_spec answers "not installed"
        import torch
        from torch import nn
        import cost_models
        from spartan_core import Sparsifier, SparsifierConfig
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        sparsifier = Sparsifier(model, SparsifierConfig(target=0.2), total_steps=4)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(4):
            model(torch.randn(8, 16)).sum().backward()
            opt.step(); opt.zero_grad(); sparsifier.step()
        sparsifier.finalize()
        cost_models.plan(model, cost_models.get("params"), 0.3)
        print("ok")
    """)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
