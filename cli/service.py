"""The service sub-commands of ``spartan``: serve, demo, submit, status, cancel, download,
plan, jobs and apikey. ``cli.main`` registers them with ``register(app)``.

Client commands talk to ``SPARTAN_API_URL`` (default http://127.0.0.1:8000) with the bearer
token ``SPARTAN_API_KEY`` when set.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cli.serve import QUICKSTART, follow, print_summary, run_demo, run_service, summarize
from spartan.client import SpartanAPIError, SpartanClient, format_detail
from spartan.keys import create_api_key
from spartan.settings import get_settings
from spartan.spec import read_spec_file
from spartan.store import get_store

console = Console()
err_console = Console(stderr=True)

apikey_app = typer.Typer(help="Manage API keys (written straight to the job store).")


def _client() -> SpartanClient:
    return SpartanClient.from_settings(get_settings())


@contextmanager
def _service() -> Iterator[SpartanClient]:
    """A client of the configured service; an error answer is printed and exits with 2."""
    try:
        with _client() as client:
            yield client
    except SpartanAPIError as exc:
        err_console.print(f"[red]error {exc.status_code}[/red]: {format_detail(exc.detail)}")
        raise typer.Exit(code=2) from None


def _print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    worker: Annotated[bool, typer.Option(help="also start an embedded worker process")] = True,
) -> None:
    """Start the API and a worker (state under SPARTAN_HOME; embedded defaults)."""
    run_service(get_settings(), host=host, port=port, worker=worker)


def demo(
    spec: Annotated[
        Path | None, typer.Argument(help="job spec (default: examples/quickstart.yaml)")
    ] = None,
) -> None:
    """Start the service, run the quickstart job end to end, print its results, stop."""
    raise typer.Exit(code=run_demo(get_settings(), spec_path=spec or QUICKSTART, console=console))


def submit(
    spec: Annotated[Path, typer.Argument(help="job spec, YAML or JSON", exists=True)],
    wait: Annotated[bool, typer.Option(help="follow progress until the job ends")] = False,
    idempotency_key: Annotated[
        str | None, typer.Option(help="retrying with the same key returns the same job")
    ] = None,
) -> None:
    """Submit a job; with --wait show a live progress bar and the results."""
    try:
        body = read_spec_file(spec)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    key = idempotency_key or str(uuid.uuid4())
    with _service() as client:
        job = client.submit(body, idempotency_key=key)
        console.print(f"{job['id']} {job['status']}")
        if not wait:
            return
        final = follow(client, job["id"], console=console)
        print_summary(summarize(client, final, get_settings()), console)
    if final["status"] != "succeeded":
        raise typer.Exit(code=1)


def status(job_id: Annotated[str, typer.Argument(help="job id")]) -> None:
    """Show a job's status, progress, metrics and error (JSON)."""
    with _service() as client:
        job = client.job(job_id)
    job.pop("spec", None)
    _print_json(job)


def cancel(job_id: Annotated[str, typer.Argument(help="job id")]) -> None:
    """Cancel a job (queued: at once; running: at its next step)."""
    with _service() as client:
        job = client.cancel(job_id)
    console.print(f"{job['id']} {job['status']} (cancel requested)")


def download(
    job_id: Annotated[str, typer.Argument(help="job id")],
    names: Annotated[list[str] | None, typer.Argument(help="artifact names (default: all)")] = None,
    out: Annotated[Path, typer.Option(help="folder to write into")] = Path("."),
) -> None:
    """Download a job's artifacts."""
    folder = out / job_id if not names else out
    folder.mkdir(parents=True, exist_ok=True)
    with _service() as client:
        wanted = names or [a["name"] for a in client.artifacts(job_id)["data"]]
        for name in wanted:
            path = client.download(job_id, name, folder / name)
            console.print(f"{path}")


def _block(value: str) -> list[int]:
    try:
        rows, cols = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"expected ROWSxCOLS such as 4x4, got {value!r}") from None
    return [rows, cols]


def _nm(value: str) -> list[int]:
    try:
        n, m = (int(v) for v in value.split(":"))
    except ValueError:
        raise typer.BadParameter(f"expected N:M such as 2:4, got {value!r}") from None
    return [n, m]


def plan(
    architecture: Annotated[str, typer.Argument(help="e.g. resnet50")],
    source: Annotated[str, typer.Option(help="timm or torchvision")] = "torchvision",
    sparsity: Annotated[float | None, typer.Option(help="fraction of weights removed")] = None,
    cost_fraction: Annotated[float | None, typer.Option(help="kept fraction of the cost")] = None,
    cost_model: Annotated[str, typer.Option(help="registered cost model")] = "params",
    cost_params: Annotated[str, typer.Option(help="cost model parameters as JSON")] = "{}",
    block: Annotated[str, typer.Option(help="block shape ROWSxCOLS")] = "1x1",
    nm: Annotated[
        str | None, typer.Option(help="N:M structure such as 2:4 (the target may be left out)")
    ] = None,
    distribution: Annotated[str, typer.Option(help="global, uniform or erk")] = "global",
    input_size: Annotated[str, typer.Option(help="C,H,W")] = "3,224,224",
    num_classes: Annotated[int, typer.Option()] = 1000,
    checkpoint: Annotated[
        Path | None, typer.Option(help="a .safetensors file to upload and plan from")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw answer")] = False,
) -> None:
    """One-shot plan: per-layer allocation and predicted cost, without training."""
    try:
        params = json.loads(cost_params)
        size = [int(v) for v in input_size.split(",")]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    body: dict[str, Any] = {
        "model": {
            "source": source,
            "name": architecture,
            "num_classes": num_classes,
            "input_size": size,
        },
        "cost_model": {"name": cost_model, "params": params},
        "block_shape": _block(block),
        "distribution": distribution,
    }
    if nm is not None:
        body["nm"] = _nm(nm)
    if sparsity is not None:
        body["sparsity"] = sparsity
    if cost_fraction is not None:
        body["cost_fraction"] = cost_fraction
    with _service() as client:
        if checkpoint is not None:
            body["model"]["checkpoint"] = client.upload(checkpoint)["id"]
        answer = client.plan(body)
    if as_json:
        _print_json(answer)
        return
    print_plan(answer)


def print_plan(answer: dict[str, Any]) -> None:
    """The plan's per-layer rows as a table, then its totals."""
    result = answer.get("plan", {})
    layers = result.get("layers") or []
    table = Table(
        title=f"{answer['model']} under {answer['cost_model']}, target {answer['target']:g}"
    )
    columns = [
        k
        for k in ("name", "entries", "kept", "density", "cost_dense", "cost_sparse")
        if layers and k in layers[0]
    ]
    columns = columns or (sorted(layers[0]) if layers else [])
    for col in columns:
        table.add_column(col, justify="left" if col == "name" else "right")
    for row in layers:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    console.print(table)
    totals = {k: v for k, v in result.items() if k != "layers"}
    if totals:
        _print_json(totals)


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def jobs(
    status_filter: Annotated[
        str | None, typer.Option("--status", help="queued, running, succeeded, failed, cancelled")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 20,
    offset: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """List your jobs, newest first."""
    with _service() as client:
        page = client.jobs(status=status_filter, limit=limit, offset=offset)
    table = Table(title=f"{page['count']} job(s)")
    table.add_column("id", no_wrap=True, min_width=28)
    for col in ("name", "status", "created", "error"):
        table.add_column(col)
    for job in page["data"]:
        table.add_row(
            job["id"],
            job.get("name") or "",
            job["status"],
            job["created_at"][:19],
            (job.get("error") or "")[:60],
        )
    console.print(table)


@apikey_app.command("create")
def apikey_create(
    owner: Annotated[str, typer.Option(help="who the key acts for")],
) -> None:
    """Create an API key for OWNER and print it once (only its hash is stored)."""
    settings = get_settings()
    settings.ensure_dirs()
    try:
        key = create_api_key(get_store(settings.database_url), owner=owner)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--owner") from None
    sys.stdout.write(key + "\n")
    err_console.print(f"API key for {owner!r} created; it is shown only once.")


def register(app: typer.Typer) -> None:
    """Add the service commands to the ``spartan`` command."""
    for command in (serve, demo, submit, status, cancel, download, plan, jobs):
        app.command()(command)
    app.add_typer(apikey_app, name="apikey")
