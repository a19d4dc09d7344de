"""The sweep sub-commands of ``spartan``: sweep, sweep-status, sweep-cancel, sweeps.

``spartan sweep SPEC --cost-fraction 0.5,0.3,0.1`` (or ``--sparsity 0.5,0.8,0.9``) submits
one job spec at several targets (``POST /v1/sweeps``); with ``--wait`` it shows the children
finishing and prints the Pareto frontier as a table at the end (exit code 1 when no child
succeeded). The spec file may keep a target of its own: the sweep's targets replace it.
``cli.main`` registers them with ``register(app)``.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.service import _print_json, _service
from spartan.spec import read_spec_file

console = Console()
err_console = Console(stderr=True)

_FINISHED = ("succeeded", "failed", "cancelled")


def _targets(value: str | None, option: str) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"expected comma-separated numbers such as 0.5,0.3,0.1, got {value!r}",
            param_hint=option,
        ) from None


def sweep(
    spec: Annotated[Path, typer.Argument(help="job spec, YAML or JSON", exists=True)],
    cost_fraction: Annotated[
        str | None, typer.Option(help="kept cost fractions, e.g. 0.5,0.3,0.2,0.1")
    ] = None,
    sparsity: Annotated[
        str | None, typer.Option(help="sparsity targets, e.g. 0.5,0.8,0.9 (params cost model)")
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="follow the children until all end, then print the frontier")
    ] = False,
    plot: Annotated[
        Path | None, typer.Option(help="with --wait: also save the frontier plot (PNG) here")
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="retrying with the same key returns the same sweep")
    ] = None,
) -> None:
    """Train one spec at several targets (one job each) and find the Pareto frontier of
    top-1 against cost."""
    if (cost_fraction is None) == (sparsity is None):
        raise typer.BadParameter("give exactly one of --cost-fraction and --sparsity")
    try:
        body = read_spec_file(spec)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    targets = body.get("sparsity")
    if isinstance(targets, dict):
        replaced = {k: targets.pop(k) for k in ("sparsity", "cost_fraction") if k in targets}
        if any(v is not None for v in replaced.values()):
            given = ", ".join(f"sparsity.{k} {v}" for k, v in replaced.items() if v is not None)
            err_console.print(f"{spec.name}: {given} replaced by the sweep's targets")
    key = idempotency_key or str(uuid.uuid4())
    with _service() as client:
        created = client.submit_sweep(
            body,
            cost_fraction=_targets(cost_fraction, "--cost-fraction"),
            sparsity=_targets(sparsity, "--sparsity"),
            idempotency_key=key,
        )
        console.print(f"{created['id']} {created['status']} ({len(created['jobs'])} jobs)")
        for job in created["jobs"]:
            console.print(f"  {job['id']} target {job['target']:g}", highlight=False)
        if not wait:
            return
        final = follow_sweep(client, created["id"])
        if plot is not None:
            plot.write_bytes(client.sweep_plot(created["id"]))
            console.print(f"frontier plot: {plot}")
    print_sweep(final)
    if final["counts"].get("succeeded", 0) == 0:
        raise typer.Exit(code=1)


def follow_sweep(client: Any, sweep_id: str, *, poll_s: float = 2.0) -> dict[str, Any]:
    """A live bar of finished children (with the counts by status) until the sweep ends;
    returns the finished sweep."""
    columns = (
        TextColumn("[bold]{task.fields[status]:<9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("jobs"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(sweep_id, total=None, status="queued", info="")

        def update(sweep: dict[str, Any]) -> None:
            counts = sweep["counts"]
            info = "  ".join(f"{s} {n}" for s, n in counts.items() if n)
            bar.update(
                task,
                status=sweep["status"],
                completed=sum(counts.get(s, 0) for s in _FINISHED),
                total=len(sweep["jobs"]),
                info=info,
            )

        return client.wait_sweep(sweep_id, poll_s=poll_s, on_update=update)


def _pct(value: Any) -> str:
    return f"{value:.2%}" if isinstance(value, int | float) else "-"


def _ms(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


def print_sweep(sweep: dict[str, Any]) -> None:
    """The sweep's children and its frontier, as tables."""
    points = {p["job_id"]: p for p in sweep.get("points") or []}
    on = {p["job_id"] for p in sweep.get("frontier") or []}
    children = Table(title=f"sweep {sweep['id']}: {sweep['status']} (targets on {sweep['axis']})")
    for col in ("job", "target", "status", "top-1", "cost fraction", "latency ms", "frontier"):
        children.add_column(col, no_wrap=col == "job", justify="left" if col == "job" else "right")
    for job in sweep["jobs"]:
        point = points.get(job["id"], {})
        children.add_row(
            job["id"],
            f"{job['target']:g}",
            job["status"],
            _pct(point.get("top1")),
            _pct(point.get("cost_fraction")),
            _ms(point.get("latency_ms")),
            "*" if job["id"] in on else "",
        )
    console.print(children)
    frontier = sweep.get("frontier") or []
    if not frontier:
        console.print("no frontier: no child succeeded")
        return
    table = Table(title="Pareto frontier (top-1 against cost, cheapest first)")
    for col in ("target", "top-1", "cost fraction", "latency ms", "job"):
        table.add_column(col, justify="left" if col == "job" else "right", no_wrap=col == "job")
    for p in frontier:
        table.add_row(
            f"{p['target']:g}",
            _pct(p["top1"]),
            _pct(p["cost_fraction"]),
            _ms(p.get("latency_ms")),
            p["job_id"],
        )
    console.print(table)


def sweep_status(
    sweep_id: Annotated[str, typer.Argument(help="sweep id")],
    as_json: Annotated[bool, typer.Option("--json", help="print the raw answer")] = False,
) -> None:
    """Show a sweep: its children and the Pareto frontier so far."""
    with _service() as client:
        answer = client.sweep(sweep_id)
    if as_json:
        _print_json(answer)
        return
    print_sweep(answer)


def sweep_cancel(sweep_id: Annotated[str, typer.Argument(help="sweep id")]) -> None:
    """Cancel every unfinished child of a sweep."""
    with _service() as client:
        answer = client.cancel_sweep(sweep_id)
    states = "  ".join(f"{s} {n}" for s, n in answer["counts"].items() if n)
    console.print(f"{answer['id']} {answer['status']} (cancel requested): {states}")


def sweeps(
    limit: Annotated[int, typer.Option(min=1, max=200)] = 20,
    offset: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """List your sweeps, newest first."""
    with _service() as client:
        page = client.sweeps(limit=limit, offset=offset)
    table = Table(title=f"{page['count']} sweep(s)")
    table.add_column("id", no_wrap=True, min_width=28)
    for col in ("name", "status", "targets", "succeeded", "created"):
        table.add_column(col)
    for s in page["data"]:
        table.add_row(
            s["id"],
            s.get("name") or "",
            s["status"],
            f"{s['axis']} " + ",".join(f"{t:g}" for t in s["targets"]),
            f"{s['counts'].get('succeeded', 0)}/{sum(s['counts'].values())}",
            s["created_at"][:19],
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the sweep commands to the ``spartan`` command."""
    app.command()(sweep)
    app.command("sweep-status")(sweep_status)
    app.command("sweep-cancel")(sweep_cancel)
    app.command()(sweeps)
