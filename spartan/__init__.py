"""The torch-free package beside the layers: what every service layer shares.

``settings`` (one pydantic-settings class), ``spec`` (the job specification, the contract
between the API and the worker), ``resolve`` (the files, folders and queue a spec names),
``errors`` (``FieldError``: an error located in a spec), ``store`` (the job store, the source of
truth; its schema migrated by ``migrations``, Alembic), ``lease`` (liveness of the process
running a job), ``queue`` (the Celery configuration, task name, routing, the one sender and the
re-sending of lost messages), ``keys`` (API keys) and ``client`` (the REST client);
``examples/`` holds the example job specs as package data. Nothing here imports torch or
FastAPI (``lint-imports`` checks it).
"""
