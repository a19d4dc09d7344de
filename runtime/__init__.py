"""The job runtime: what both the API and the worker need to turn a job spec into a run.

Models and datasets by name, validation of a spec against the registries, the cost model a
spec names, one-shot plans, the training loop and its checkpoints, artifacts, export, and
running a stored job (``jobs``). It imports torch; the service packages above it (``api``,
``worker``) load it where they need it, and the torch-free ``spartan`` package below it holds
the spec, the store and the queue.
"""
