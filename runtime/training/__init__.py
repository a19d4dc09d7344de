"""The one training loop: a job specification in, a sparse model and its artifacts out.

Used by the job runner (``runtime.jobs``, behind the Celery task) and by ``spartan train
SPEC.yaml --out DIR``; the caller supplies hooks for progress and stop requests. A run
(``loop.run_training``):

1. builds the data splits, the model (random init or a checkpoint), the cost model and the
   Sparsifier's configuration (``setup``);
2. evaluates the dense model (top-1/top-5 on the validation split, ``evaluation``);
3. attaches the ``Sparsifier`` and trains ``epochs`` epochs: SGD or AdamW, a per-step learning
   rate with linear warm-up then cosine decay (``schedule``), label smoothing, mixed precision
   on CUDA; the Sparsifier is stepped after every optimizer step; after each epoch the masked
   model is evaluated into ``history``;
4. finalizes (weights baked, masking removed), evaluates the sparse model, deploys it on one
   validation batch (``cost_models.deploy``, phase ``deploying``: the kernel per layer measured
   on this device, into the cost report and ``model.sparse.safetensors``) and writes the
   artifacts (``finish``, ``runtime.artifacts``).

Checkpoints (every ``checkpoint_every_steps`` steps and at each epoch end) hold everything the
rest of the run depends on (``state``): model, optimizer, scheduler, gradient scaler,
sparsifier, RNG states, the data position (epoch, next batch; the batch order is a function of
the seed and the epoch) and the metrics so far. A run started with an existing checkpoint
resumes from it; on CPU the result is bit-identical to an uninterrupted run.

Stop requests are polled after every step (the hook decides how often it really looks):
``cancel`` ends the run at once, ``preempt`` writes a checkpoint first. The job's time limit
(``resources.time_limit_s``, run time summed over attempts) also writes a checkpoint, then
raises ``JobTimeLimitExceeded``.

With ``resources.devices`` N > 1 the run is N torch.distributed ranks on this machine, each
running this loop on its slice of every batch (``distributed``: rank 0 in the calling process,
the others started by it; ``rank``: their entry point). Rank 0 alone reports, evaluates,
checkpoints and finishes; stop requests and the time limit are broadcast from it; the masks
are checked identical on every rank at each epoch end (``metrics.json``: ``mask_sha256``).
A failed rank fails the run with ``RankFailed``, differing masks with ``MasksDiffer``.
"""

from runtime.training.distributed import MasksDiffer, RankFailed
from runtime.training.loop import (
    JobTimeLimitExceeded,
    TrainHooks,
    TrainResult,
    run_training,
)
from runtime.training.schedule import lr_factor
from runtime.training.state import spec_fingerprint

__all__ = [
    "JobTimeLimitExceeded",
    "MasksDiffer",
    "RankFailed",
    "TrainHooks",
    "TrainResult",
    "lr_factor",
    "run_training",
    "spec_fingerprint",
]
