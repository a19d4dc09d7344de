"""Screenshots of the dashboard for the README: docs/dashboard_{jobs,job,plan}.png.

Starts ``spartan serve`` on a fresh temporary home (embedded defaults), trains a few small
jobs on the bundled digits data, and photographs the three pages with the headless Chromium
the browser tests use (Debian's ``chromium``, driven by Playwright)::

    .venv/bin/python scripts/screenshots.py [--out docs]

It takes a few minutes on a CPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cli.serve import free_port, stop_process, wait_ready  # noqa: E402
from spartan.client import SpartanClient  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1360, "height": 900}


def _job(name: str, epochs: int, **sparsity: Any) -> dict[str, Any]:
    return {
        "name": name,
        "model": {"source": "torchvision", "name": "resnet18", "input_size": [3, 16, 16]},
        "data": {"source": "digits"},
        "sparsity": {"method": "spartan", **sparsity},
        "training": {"epochs": epochs, "batch_size": 64, "lr": 0.05},
    }


JOBS = [
    _job("resnet18-digits-90", 6, sparsity=0.9),
    _job("resnet18-digits-2:4", 2, nm=[2, 4], exclude=["conv1"]),
    _job("resnet18-digits-95-uniform", 2, sparsity=0.95, distribution="uniform"),
]


def _wait(client: SpartanClient, job_id: str) -> dict[str, Any]:
    while True:
        job = client.job(job_id)
        if job["status"] in {"succeeded", "failed", "cancelled"}:
            return job
        time.sleep(1)


def _shoot(page: Page, url: str | None, path: Path, *, clip_height: int | None = None) -> None:
    """Photograph ``url`` (None: the page as it is), at most ``clip_height`` pixels of it."""
    if url is not None:
        page.goto(url)
    page.wait_for_timeout(2500)  # charts drawn, the first live refresh done
    height = page.evaluate(
        "Math.ceil(document.querySelector('footer').getBoundingClientRect().bottom)"
    )
    if clip_height is not None:
        height = min(height, clip_height)
    page.screenshot(
        path=str(path),
        full_page=True,
        clip={"x": 0, "y": 0, "width": VIEWPORT["width"], "height": height},
    )
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        (home / "data").mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPARTAN_")}
        env.update(
            SPARTAN_HOME=str(home / "home"),
            SPARTAN_DATA_ROOTS=f'["{home / "data"}"]',
            SPARTAN_PROGRESS_INTERVAL_S="0.3",
        )
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = (home / "serve.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_ready(url, proc=proc, timeout=180)
            with SpartanClient(url, timeout=60) as client:
                ids = [client.submit(spec)["id"] for spec in JOBS]
                cancelled = client.submit(_job("cancelled-before-start", 1, sparsity=0.8))
                client.cancel(cancelled["id"])
                print(ids[0], _wait(client, ids[0])["status"])  # the others queued or running
                with sync_playwright() as p:
                    browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                    page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
                    _shoot(page, f"{url}/ui/", args.out / "dashboard_jobs.png")
                    _shoot(
                        page,
                        f"{url}/ui/jobs/{ids[0]}",
                        args.out / "dashboard_job.png",
                        clip_height=2700,
                    )
                    page.goto(f"{url}/ui/plan")
                    page.locator("#distribution").select_option("erk")
                    page.locator("#target-value").fill("0.9")
                    page.locator("#plan-submit").click()
                    page.locator("#plan-body tr").first.wait_for(timeout=120_000)
                    _shoot(page, None, args.out / "dashboard_plan.png", clip_height=1500)
                    browser.close()
        finally:
            stop_process(proc, timeout=60)
            log.close()


if __name__ == "__main__":
    main()
