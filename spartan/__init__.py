"""The torch-free package beside the layers: what every service layer shares.

``settings`` (one pydantic-settings class), ``spec`` (the job specification, the contract
between the API and the worker), ``resolve`` (the files, folders and queue a spec names),
``errors`` (``FieldError``: an error located in a spec), ``store`` (the job store, the source of
truth), ``queue`` (the Celery configuration, task name, routing and the one sender), ``keys``
(API keys) and ``client`` (the REST client). Nothing here imports torch or FastAPI
(``lint-imports`` checks it).
"""
