# The shipyard image for KFP components (and `shipyard rollout` in a cluster job).
# Build:  docker build -t ghcr.io/shipyard-mlops/shipyard:0.1.0 .
# The image is not built on the development machines (no Docker engine there).
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
RUN pip install uv
WORKDIR /opt/shipyard
COPY requirements.lock overrides.txt pyproject.toml README.md ./
COPY components ./components
# The same locked environment as scripts/setup, installed into the system interpreter, plus
# pip (kfp's lightweight components run `python3 -m pip install kfp` first).
RUN uv pip sync --system requirements.lock \
 && uv pip install --system --no-deps -e . \
 && python -c "import shipyard, tensorflow_serving, kfp"
# The serving-runtime check's environment (tensorflow-cpu of the TF Serving image the manifests
# render), made at build time so pipeline steps never need the package index.
ENV SHIPYARD_CACHE_DIR=/opt/shipyard/cache
RUN python -c "from shipyard.exporter.runtime import choose_runtime, ensure_environment; \
c = choose_runtime(None); ensure_environment(c.version, c.pip_spec)"
ENTRYPOINT []
