# One image for the API and the workers.
# torch from PyPI bundles its CUDA libraries, so the same image runs on GPU hosts with the
# NVIDIA container runtime and on CPU-only hosts.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SPARTAN_HOME=/var/lib/spartan \
    SPARTAN_NATIVE_CACHE=/var/lib/spartan/native

# gcc and libc headers: spartan_core.native compiles its fused CPU kernels on first use.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Dependencies first (cached while only the source changes).
COPY pyproject.toml README.md ./
RUN mkdir -p spartan spartan_core cost_models runtime api worker cli \
    && touch spartan/__init__.py spartan_core/__init__.py cost_models/__init__.py \
       runtime/__init__.py api/__init__.py worker/__init__.py cli/__init__.py \
    && pip install '.[service,plots,mlflow]' \
    && pip uninstall -y spartan
COPY spartan ./spartan
COPY spartan_core ./spartan_core
COPY cost_models ./cost_models
COPY runtime ./runtime
COPY api ./api
COPY worker ./worker
COPY cli ./cli
COPY examples ./examples
RUN pip install --no-deps . \
    && useradd --create-home --uid 1000 spartan \
    && mkdir -p /var/lib/spartan /data \
    && chown -R spartan:spartan /var/lib/spartan

USER spartan
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=5 \
    CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
CMD ["spartan", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker"]
