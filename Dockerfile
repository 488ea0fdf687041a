# sslic HTTP service. Default target: slim CPU image (ONNX Runtime, no torch) with models/default inside.
# `--target gpu`: NVIDIA CUDA runtime base with onnxruntime-gpu (CUDA provider first, CPU as fallback).
ARG PYTHON_BASE=python:3.11-slim-bookworm
ARG CUDA_BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# ---- build: a virtual environment with sslic and its runtime dependencies ----------------------------------
FROM ${PYTHON_BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/sslic
COPY pyproject.toml README.md ./
COPY service ./service
COPY model_export ./model_export
COPY models ./models
RUN /opt/sslic/bin/pip install . \
    && /opt/sslic/bin/python -c "import service.codec, sslic_models; import importlib.util as u; assert u.find_spec('torch') is None"

# ---- gpu: CUDA runtime + onnxruntime-gpu -------------------------------------------------------------------
FROM ${CUDA_BASE} AS gpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv tini \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/sslic
COPY --from=build /src /src
# onnxruntime-gpu provides the same `onnxruntime` module as the CPU wheel, which it replaces
RUN /opt/sslic/bin/pip install /src \
    && /opt/sslic/bin/pip uninstall -y onnxruntime \
    && /opt/sslic/bin/pip install "onnxruntime-gpu>=1.20,<2" \
    && rm -rf /src \
    && useradd --system --uid 10001 --no-create-home sslic
ENV PATH=/opt/sslic/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    SSLIC_HOST=0.0.0.0 SSLIC_PORT=8000 SSLIC_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["tini", "--", "sslic"]
CMD ["serve"]

# ---- cpu (default): slim Python base, the venv from the build stage, non-root, tini as PID 1 ------------------
FROM ${PYTHON_BASE} AS cpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home sslic
COPY --from=build /opt/sslic /opt/sslic
ENV PATH=/opt/sslic/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    SSLIC_HOST=0.0.0.0 SSLIC_PORT=8000
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["tini", "--", "sslic"]
CMD ["serve"]
