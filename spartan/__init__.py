"""Service plumbing shared by the API, the worker and the CLI (settings, job spec, job store).

Importing this package pulls in neither torch nor FastAPI nor Celery.
"""
