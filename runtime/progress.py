"""Training progress: running sums on the device, and reports at a bounded rate.

The loop adds each step's loss and correct count to device tensors (no host sync per step) and
asks ``ProgressMeter.due()`` whether a report is due; only then are the sums read, so progress
costs one synchronisation per ``interval_s`` however short the steps are.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


class RateLimit:
    """True at most once per ``interval_s`` seconds (always on the first call)."""

    def __init__(self, interval_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if interval_s < 0:
            raise ValueError(f"interval_s: must be >= 0, got {interval_s!r}")
        self.interval_s = interval_s
        self.clock = clock
        self._last: float | None = None

    def ready(self) -> bool:
        now = self.clock()
        if self._last is None or now - self._last >= self.interval_s:
            self._last = now
            return True
        return False


class ProgressMeter:
    """Running training statistics since the last report.

    Args:
        total_steps: steps of the whole run (for the ETA).
        interval_s: minimum seconds between reports.
        device: where the running sums live.
        start_step: the step the run (re)starts at; throughput counts from there.
    """

    def __init__(
        self,
        *,
        total_steps: int,
        interval_s: float,
        device: torch.device,
        start_step: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total_steps = total_steps
        self.clock = clock
        self.limit = RateLimit(interval_s, clock=clock)
        self.device = device
        self._loss = torch.zeros((), dtype=torch.float64, device=device)
        self._correct = torch.zeros((), dtype=torch.float64, device=device)
        self._seen = 0
        self._window_start = clock()
        self._window_step = start_step
        self._run_start = clock()
        self._run_start_step = start_step

    def update(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one batch: ``loss`` is the batch mean, ``logits`` (B, classes), ``labels`` (B,)."""
        batch = labels.shape[0]
        self._loss += loss.detach().double() * batch
        self._correct += (logits.detach().argmax(dim=1) == labels).sum().double()
        self._seen += batch

    def due(self, step: int) -> bool:
        """Whether a report should be sent after ``step`` (rate-limited; always at the end)."""
        return step >= self.total_steps or self.limit.ready()

    def report(self, step: int) -> dict[str, Any]:
        """Loss, accuracy and throughput since the last report, and the ETA; resets the window."""
        now = self.clock()
        seen = max(self._seen, 1)
        window = max(now - self._window_start, 1e-9)
        samples_per_s = self._seen / window
        steps_done = step - self._run_start_step
        run_time = now - self._run_start
        eta = (self.total_steps - step) * run_time / steps_done if steps_done > 0 else None
        out = {
            "loss": float(self._loss) / seen if self._seen else None,
            "accuracy": float(self._correct) / seen if self._seen else None,
            "throughput": samples_per_s,
            "eta_s": eta,
        }
        self._loss.zero_()
        self._correct.zero_()
        self._seen = 0
        self._window_start = now
        self._window_step = step
        return out
