"""Job polls under load: one API process, ``GET /v1/jobs/{id}`` with wrk, against the targets.

Starts ``spartan serve --no-worker`` (one uvicorn process, the embedded defaults: SQLite job
store and kombu's SQLite broker in a fresh ``SPARTAN_HOME``, auth off) and one job, then runs
wrk (a real HTTP load generator, installed from Debian when missing) against the job and
against ``/healthz`` (the same server doing no work: the ceiling of the stack), ``--repeats``
times each, interleaved. While wrk runs, the API process's resident memory is sampled from
``/proc``. Prints a table of medians, the load average at each run, and the verdict against
issue 14's targets: >= 1000 requests/s and p99 < 50 ms at 100 connections, RSS < 250 MB.

The job is written straight into the store before the API starts (the API's start-up
re-send then enqueues it), so the API process serves only polls: that is the case the memory
target is about. ``--submit`` submits it with ``POST /v1/jobs`` instead; validation then
imports torch into the API process, which the RSS column shows. ``--with-workers`` also
starts the embedded worker (``spartan serve`` as it comes) and polls while the job trains
(a longer copy of ``examples/quickstart.yaml``), the under-training case; on a 2-core
machine the worker takes most of the CPU, so that row is reported, not judged.

    .venv/bin/python benchmarks/polls.py                         # ~2 min, prints the verdict
    .venv/bin/python benchmarks/polls.py --with-workers --json polls-training.json
    .venv/bin/python benchmarks/polls.py --duration 5 --repeats 1  # a quick look

Figures need a quiet machine: wrk and the API share its cores, and anything else running
moves them (the load average is recorded with every run for that reason).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
TARGET_RPS = 1000.0
TARGET_P99_MS = 50.0
TARGET_RSS_MB = 250.0
_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


# wrk ------------------------------------------------------------------------------------------
def ensure_wrk() -> str:
    """The path of wrk, installing Debian's package first when it is missing."""
    path = shutil.which("wrk")
    if path:
        return path
    apt = ["apt-get", "install", "-y", "wrk"]
    if os.geteuid() != 0 and shutil.which("sudo"):
        apt = ["sudo", "-n", *apt]
    print("wrk not found; installing:", " ".join(apt), file=sys.stderr)
    subprocess.run(apt, check=True)
    path = shutil.which("wrk")
    if not path:
        raise SystemExit("wrk is still missing after apt-get install -y wrk")
    return path


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)([a-z]+)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNIT_MS[unit]


def parse_wrk(out: str) -> dict[str, Any]:
    """Requests/s, latency percentiles (ms) and errors from wrk's ``--latency`` report."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{out}")
    result: dict[str, Any] = {"rps": float(rps.group(1))}
    for pct in ("50", "75", "90", "99"):
        found = re.search(rf"^\s+{pct}%\s+([\d.]+[a-z]+)", out, re.MULTILINE)
        result[f"p{pct}_ms"] = _ms(found.group(1)) if found else None
    total = re.search(r"(\d+) requests in", out)
    result["requests"] = int(total.group(1)) if total else None
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["socket_errors"] = sum(int(g) for g in sock.groups()) if sock else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    return result


# the API process ------------------------------------------------------------------------------
def rss_mb(pid: int) -> float:
    """Resident memory of one process (VmRSS), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU time a process has used so far, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds in a thread; ``peak`` and ``last``."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(rss_mb(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(rss_mb(self.pid))


def job_body(*, epochs: int | None = None) -> dict[str, Any]:
    """The quickstart spec as the API stores it (``JobSpec(...).model_dump(mode="json")``)."""
    from spartan.spec import JobSpec

    raw = yaml.safe_load(QUICKSTART.read_text())
    if epochs is not None:
        raw["training"]["epochs"] = epochs
    return JobSpec.model_validate(raw).model_dump(mode="json")


def seed_job(home: Path, body: dict[str, Any]) -> str:
    """Write one queued job into the embedded store under ``home`` (as POST /v1/jobs would)."""
    from spartan.store import JobStore

    store = JobStore(f"sqlite:///{home / 'spartan.db'}")
    job, _ = store.create_job(owner="local", spec=body)
    store.engine.dispose()
    return job.id


def start_api(
    home: Path, port: int, *, with_workers: bool, serve_args: list[str], log: Path
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SPARTAN_HOME": str(home)}
    cmd = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if not with_workers:
        cmd.append("--no-worker")
    cmd += serve_args
    print("starting:", " ".join(cmd[1:]), file=sys.stderr)
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_http(url: str, proc: subprocess.Popen[bytes], *, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the API exited with {proc.returncode} before answering")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=10)


# the run --------------------------------------------------------------------------------------
def run_wrk(wrk: str, url: str, args: argparse.Namespace, pid: int) -> dict[str, Any]:
    cmd = [wrk, "-t", str(args.threads), "-c", str(args.connections), "-d", f"{args.duration}s"]
    cmd += ["--timeout", "10s", "--latency", url]
    load_before = os.getloadavg()[0]
    cpu_before = cpu_s(pid)
    with RssSampler(pid) as rss:
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    cpu_used = cpu_s(pid) - cpu_before
    result = parse_wrk(done.stdout)
    result.update(
        # CPU the API spent per answered request: steadier than wall-clock figures on a
        # shared machine, so the one to compare changes by.
        cpu_ms_per_request=1000 * cpu_used / max(result["requests"] or 1, 1),
        rss_peak_mb=max(rss.samples),
        rss_end_mb=rss.samples[-1],
        load1_before=load_before,
        load1_after=os.getloadavg()[0],
    )
    return result


def median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per endpoint (medians)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--with-workers", action="store_true", help="poll while a job trains")
    parser.add_argument("--submit", action="store_true", help="submit with POST /v1/jobs")
    parser.add_argument("--json", type=Path, help="write every run and the medians here")
    parser.add_argument(
        "--serve-arg", action="append", default=[], help="extra `spartan serve` option"
    )
    args = parser.parse_args()

    wrk = ensure_wrk()
    base = f"http://127.0.0.1:{args.port}"
    body = job_body(epochs=200 if args.with_workers else None)
    with tempfile.TemporaryDirectory(prefix="spartan-polls-") as tmp:
        home = Path(tmp)
        log = home / "api.log"
        job_id = None if args.submit else seed_job(home, body)
        proc = start_api(
            home, args.port, with_workers=args.with_workers, serve_args=args.serve_arg, log=log
        )
        try:
            wait_http(f"{base}/healthz", proc)
            rss_start = rss_mb(proc.pid)
            if job_id is None:
                created = httpx.post(f"{base}/v1/jobs", json=body, timeout=120)
                created.raise_for_status()
                job_id = created.json()["id"]
            job_url = f"{base}/v1/jobs/{job_id}"
            if args.with_workers:
                _wait_running(job_url, proc)
            for _ in range(20):  # warm-up: first requests build caches and routes
                httpx.get(job_url, timeout=10).raise_for_status()
                httpx.get(f"{base}/healthz", timeout=10).raise_for_status()
            rss_idle = rss_mb(proc.pid)
            runs: dict[str, list[dict[str, Any]]] = {"job": [], "healthz": []}
            for rep in range(args.repeats):
                for name, url in (("job", job_url), ("healthz", f"{base}/healthz")):
                    result = run_wrk(wrk, url, args, proc.pid)
                    runs[name].append(result)
                    print(
                        f"[{rep + 1}/{args.repeats}] {name:8s} {result['rps']:8.0f} req/s  "
                        f"p50 {result['p50_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} ms  "
                        f"cpu {result['cpu_ms_per_request']:5.2f} ms/req  "
                        f"rss {result['rss_peak_mb']:6.0f} MB  load {result['load1_before']:.2f}",
                        file=sys.stderr,
                    )
            status = httpx.get(job_url, timeout=10).json()["status"]
        finally:
            stop(proc)

    summary = {
        name: {
            k: median(rs, k)
            for k in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_request", "rss_peak_mb")
        }
        for name, rs in runs.items()
    }
    errors = sum(r["socket_errors"] + r["non_2xx"] for rs in runs.values() for r in rs)
    rss_peak = max(r["rss_peak_mb"] for rs in runs.values() for r in rs)
    job = summary["job"]
    checks = {
        f"requests/s >= {TARGET_RPS:.0f}": job["rps"] >= TARGET_RPS,
        f"p99 < {TARGET_P99_MS:.0f} ms": job["p99_ms"] < TARGET_P99_MS,
        f"RSS < {TARGET_RSS_MB:.0f} MB": rss_peak < TARGET_RSS_MB,
        "no errors": errors == 0,
    }
    report = {
        "config": {
            "connections": args.connections,
            "wrk_threads": args.threads,
            "duration_s": args.duration,
            "repeats": args.repeats,
            "with_workers": args.with_workers,
            "submit": args.submit,
            "serve_args": args.serve_arg,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
        },
        "job_status_at_end": status,
        "rss_mb": {"after_start": rss_start, "idle_after_warmup": rss_idle, "peak": rss_peak},
        "load_average": os.getloadavg(),
        "medians": summary,
        "runs": runs,
        "errors": errors,
        "checks": checks,
    }
    _print_table(report, args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


def _wait_running(job_url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the service exited while waiting for the job to start")
        status = httpx.get(job_url, timeout=10).json()["status"]
        if status == "running":
            return
        if status in ("failed", "cancelled", "succeeded"):
            raise SystemExit(f"the job ended ({status}) before polls started")
        time.sleep(1)
    raise SystemExit(f"the job did not start within {timeout:.0f} s")


def _print_table(report: dict[str, Any], args: argparse.Namespace) -> None:
    cfg = report["config"]
    mode = "with the embedded worker training" if cfg["with_workers"] else "API only"
    print(
        f"\none API process ({mode}), wrk -t{cfg['wrk_threads']} -c{cfg['connections']} "
        f"-d{cfg['duration_s']}s, medians of {cfg['repeats']}, {cfg['cpus']} CPUs"
    )
    print(
        "| endpoint | requests/s | p50 ms | p99 ms | API CPU ms/request | peak RSS MB "
        "| load (1 min) at each run |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, label in (("job", "GET /v1/jobs/{id}"), ("healthz", "GET /healthz (ceiling)")):
        m = report["medians"][name]
        loads = ", ".join(f"{r['load1_before']:.2f}" for r in report["runs"][name])
        print(
            f"| {label} | {m['rps']:.0f} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} | "
            f"{m['cpu_ms_per_request']:.2f} | {m['rss_peak_mb']:.0f} | {loads} |"
        )
    rss = report["rss_mb"]
    print(
        f"RSS: {rss['after_start']:.0f} MB after start, {rss['idle_after_warmup']:.0f} MB after "
        f"warm-up, {rss['peak']:.0f} MB peak under load; errors: {report['errors']}; "
        f"job status at the end: {report['job_status_at_end']}"
    )
    ratio = report["medians"]["job"]["rps"] / report["medians"]["healthz"]["rps"]
    print(f"polls run at {ratio:.0%} of the /healthz ceiling")
    verdict = all(report["checks"].values())
    for check, ok in report["checks"].items():
        print(f"  {'PASS' if ok else 'FAIL'}  {check}")
    judged = "" if not cfg["with_workers"] else " (under training: reported, not a target)"
    print(f"verdict: {'PASS' if verdict else 'FAIL'}{judged}")


if __name__ == "__main__":
    main()
