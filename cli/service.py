"""The service sub-commands of ``spartan``: serve, demo, submit, follow, logs, status, cancel,
download, upload, plan, jobs, apikey (create, list, revoke) and db (upgrade, current). ``cli.main``
registers them with ``register(app)``.

Client commands talk to ``SPARTAN_API_URL`` (default http://127.0.0.1:8000) with the bearer
token ``SPARTAN_API_KEY`` when set; an unreachable service or an error answer ends the command
with one line naming the fix (``cli.errors``) and exit code 2. ``apikey`` and ``db`` work on
the job store (``SPARTAN_DATABASE_URL``) directly, on the server.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine

from cli.errors import EXIT_CODE, explain
from cli.serve import QUICKSTART, follow, print_summary, run_demo, run_service, summarize
from spartan import migrations
from spartan.client import SpartanAPIError, SpartanClient
from spartan.keys import issue_api_key
from spartan.settings import get_settings
from spartan.spec import read_spec_file
from spartan.store import get_engine, get_store

console = Console()
err_console = Console(stderr=True)

apikey_app = typer.Typer(
    help="Manage API keys (written straight to the job store).", no_args_is_help=True
)
db_app = typer.Typer(help="The job store's schema (Alembic migrations).", no_args_is_help=True)


def _client() -> SpartanClient:
    return SpartanClient.from_settings(get_settings())


@contextmanager
def _service() -> Iterator[SpartanClient]:
    """A client of the configured service; an error answer or an unreachable service is
    printed in one line (``cli.errors.explain``) and exits with 2."""
    try:
        with _client() as client:
            yield client
    except (SpartanAPIError, httpx.TransportError) as exc:
        err_console.print(explain(exc), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=EXIT_CODE) from None


def _print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    worker: Annotated[bool, typer.Option(help="also start an embedded worker process")] = True,
    access_log: Annotated[
        bool, typer.Option(help="log every request (off: it slows busy servers)")
    ] = False,
) -> None:
    """Start the API and a worker (state under SPARTAN_HOME; embedded defaults)."""
    run_service(get_settings(), host=host, port=port, worker=worker, access_log=access_log)


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


def follow_job(job_id: Annotated[str, typer.Argument(help="job id")]) -> None:
    """Re-attach the live progress bar to a job (queued, running or finished) until it ends,
    then print its results; exit code 1 if it did not succeed."""
    with _service() as client:
        final = follow(client, job_id, console=console)
        print_summary(summarize(client, final, get_settings()), console)
    if final["status"] != "succeeded":
        raise typer.Exit(code=1)


def logs(
    job_id: Annotated[str, typer.Argument(help="job id")],
    follow_log: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new lines until the job ends")
    ] = False,
) -> None:
    """Print a job's log (GET /v1/jobs/{id}/logs); with --follow, as it grows."""
    with _service() as client:
        if follow_log:
            for text in client.follow_logs(job_id):
                sys.stdout.write(text)
                sys.stdout.flush()
            return
        offset = 0
        while True:  # one answer holds at most a megabyte: read to the end
            chunk = client.logs(job_id, offset=offset)
            sys.stdout.write(chunk.text)
            if chunk.next_offset == offset:
                break
            offset = chunk.next_offset


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
    """Download a job's artifacts (into OUT/JOB_ID when no names are given)."""
    folder = out / job_id if not names else out
    with _service() as client:
        available = [a["name"] for a in client.artifacts(job_id)["data"]]  # 404: no folder made
        missing = sorted(set(names or ()) - set(available))
        if missing:
            err_console.print(
                f"{job_id} has no artifact {', '.join(missing)} -> one of: "
                f"{', '.join(available) or '(none yet)'}",
                markup=False,
                highlight=False,
            )
            raise typer.Exit(code=EXIT_CODE)
        folder.mkdir(parents=True, exist_ok=True)
        for name in names or available:
            path = client.download(job_id, name, folder / name)
            console.print(f"{path}")


def upload(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, readable=True, help="a .safetensors checkpoint"
        ),
    ],
) -> None:
    """Upload a checkpoint (POST /v1/uploads) and print its id, for model.checkpoint."""
    with _service() as client:
        stored = client.upload(file)
    console.print(stored["id"], markup=False, highlight=False)
    err_console.print(
        f"{stored['filename']}: {stored['num_tensors']} tensors, {stored['size']} bytes, "
        f"sha256 {stored['sha256'][:12]}; use it as model.checkpoint: {stored['id']}",
        markup=False,
        highlight=False,
    )


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
    include: Annotated[
        list[str] | None,
        typer.Option(help="only layers matching this glob (repeat for more), e.g. 'layer*'"),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(help="leave layers matching this glob dense (repeat), e.g. conv1"),
    ] = None,
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
        "include": list(include or []),
        "exclude": list(exclude or []),
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


# (key of a plan's layer row, column title); rows are cost_models.report.LayerRow
PLAN_COLUMNS = (
    ("name", "layer"),
    ("masked", "masked"),
    ("entries", "entries"),
    ("kept_entries", "kept"),
    ("density", "density"),
    ("dense_cost", "dense cost"),
    ("sparse_cost", "sparse cost"),
)


def print_plan(answer: dict[str, Any]) -> None:
    """The plan's per-layer rows as a table, then one line of totals (``--json``: all)."""
    result = answer.get("plan", {})
    layers = result.get("layers") or []
    table = Table(
        title=f"{answer['model']} under {answer['cost_model']}, target {answer['target']:g}"
    )
    columns = [(key, title) for key, title in PLAN_COLUMNS if layers and key in layers[0]]
    for key, title in columns:
        if key == "name":
            table.add_column(title, no_wrap=True)
        else:
            table.add_column(title, justify="right")
    for row in layers:
        table.add_row(*(_cell(row.get(key)) for key, _ in columns))
    console.print(table)
    totals = result.get("totals") or {}
    unit = totals.get("unit", "")
    parts = [
        f"{label} {_cell(totals[key])}"
        for key, label in (
            ("cost_fraction", "cost fraction"),
            ("sparsity", "sparsity"),
            ("dense_cost", f"dense cost ({unit})" if unit else "dense cost"),
            ("sparse_cost", "sparse cost"),
            ("predicted_speedup", "predicted speedup"),
        )
        if totals.get(key) is not None
    ]
    if parts:
        console.print("totals: " + ", ".join(parts), highlight=False)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
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
        key_id, key = issue_api_key(get_store(settings.database_url), owner=owner)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--owner") from None
    sys.stdout.write(key + "\n")
    err_console.print(
        f"API key {key_id} for {owner!r} created; it is shown only once "
        f"(`spartan apikey revoke {key_id}` ends it)."
    )


@apikey_app.command("list")
def apikey_list(
    owner: Annotated[str | None, typer.Option(help="only this owner's keys")] = None,
) -> None:
    """List API keys (ids, owners, when created, revoked or not; never the keys)."""
    settings = get_settings()
    settings.ensure_dirs()
    keys = get_store(settings.database_url).list_api_keys(owner=owner)
    table = Table(title=f"{len(keys)} API key(s)")
    for col in ("id", "owner", "created", "revoked"):
        table.add_column(col, no_wrap=col == "id")
    for key in keys:
        table.add_row(
            key.id, key.owner, key.created_at.isoformat()[:19], "yes" if key.revoked else "no"
        )
    console.print(table)


@apikey_app.command("revoke")
def apikey_revoke(key_id: Annotated[str, typer.Argument(help="the key's id (key_...)")]) -> None:
    """Revoke an API key: requests with it are refused (401) from now on."""
    settings = get_settings()
    settings.ensure_dirs()
    key = get_store(settings.database_url).revoke_api_key(key_id=key_id)
    if key is None:
        err_console.print(
            f"no API key {key_id!r} -> `spartan apikey list` shows the ids",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(code=EXIT_CODE)
    console.print(f"API key {key.id} of {key.owner!r} revoked")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the job store (SPARTAN_DATABASE_URL) to the newest schema; every service
    process also does this when it starts."""
    settings = get_settings()
    settings.ensure_dirs()
    at = migrations.upgrade(get_engine(settings.database_url))  # a no-op once at the newest
    console.print(f"job store at revision {at} (newest: {migrations.head()})", highlight=False)


@db_app.command("current")
def db_current() -> None:
    """Print the job store's schema revision and the newest one (none: not migrated yet)."""
    settings = get_settings()
    settings.ensure_dirs()
    engine = create_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            at = migrations.current(conn)
    finally:
        engine.dispose()
    console.print(f"job store at revision {at} (newest: {migrations.head()})", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the service commands to the ``spartan`` command."""
    for command in (serve, demo, submit, status, cancel, download, upload, plan, jobs, logs):
        app.command()(command)
    app.command("follow")(follow_job)
    app.add_typer(apikey_app, name="apikey")
    app.add_typer(db_app, name="db")
