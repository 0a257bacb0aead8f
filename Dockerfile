# syntax=docker/dockerfile:1.7
#
# pipecat-vibevoice TTS server: WS /v1/tts/stream, GET /metrics, GET /health on :8000.
# docs/serving.md explains the targets; in short:
#
#   docker build --target cpu -t pvv-tts:cpu .    # bundled Piper voice only, no torch (~0.5 GB)
#   docker build --target gpu -t pvv-tts:gpu .    # VibeVoice on CUDA (+ Piper fallback)
#   docker build --target cpu-torch -t pvv-tts:cpu-torch .   # VibeVoice on CPU (torch CPU wheel)
#
#   docker run --rm -p 8000:8000 -v pvv-data:/data pvv-tts:cpu
#   docker run --rm --gpus all -p 8000:8000 -v pvv-data:/data \
#     -v ~/.cache/huggingface:/home/app/.cache/huggingface:ro pvv-tts:gpu
#
# Torch, the one dependency whose build matters:
# * cpu: no torch at all. The Piper voice runs on onnxruntime; VibeVoice is not installed
#   and the engine is forced to piper.
# * cpu-torch: torch==${TORCH_VERSION} from PyTorch's CPU wheel index
#   (TORCH_CPU_INDEX). The default PyPI wheel for Linux is the CUDA build, which drags in
#   several GB of nvidia-* packages that a CPU host cannot use.
# * gpu: torch==${TORCH_VERSION} from TORCH_GPU_INDEX (default: pip's own index, whose Linux wheel
#   bundles the CUDA runtime; the host needs only the NVIDIA driver and the container
#   toolkit). Set it to e.g. https://download.pytorch.org/whl/cu128 to pick a CUDA build.
# A constraints file pins torch for the package install, so no extra can swap it.

ARG PYTHON_VERSION=3.11
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_GPU_INDEX=

# ---------------------------------------------------------------------------- base
FROM python:${PYTHON_VERSION}-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# libgomp1: OpenMP runtime of onnxruntime/torch CPU kernels.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 app \
 && useradd --uid 10001 --gid app --create-home --home-dir /home/app app \
 && mkdir -p /data && chown app:app /data

# ------------------------------------------------------------------------- builders
FROM base AS build-base
RUN python -m venv /opt/venv && pip install --upgrade pip setuptools wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src

FROM build-base AS build-cpu
RUN pip install ".[piper,serving]" \
 && python -c "import pipecat_vibevoice.serving.app, piper, onnxruntime" \
 && ! python -c "import torch" 2>/dev/null

FROM build-base AS build-cpu-torch
ARG TORCH_VERSION
ARG TORCH_CPU_INDEX
RUN echo "torch==${TORCH_VERSION}" > /tmp/torch.txt \
 && pip install --index-url "${TORCH_CPU_INDEX}" "torch==${TORCH_VERSION}" \
 && pip install -c /tmp/torch.txt ".[piper,serving,vibevoice]" \
 && python -c "import torch; assert not torch.version.cuda, torch.__version__"

FROM build-base AS build-gpu
ARG TORCH_VERSION
ARG TORCH_GPU_INDEX
RUN echo "torch==${TORCH_VERSION}" > /tmp/torch.txt \
 && pip install ${TORCH_GPU_INDEX:+--index-url "$TORCH_GPU_INDEX"} "torch==${TORCH_VERSION}" \
 && pip install -c /tmp/torch.txt ".[piper,serving,vibevoice]" \
 && python -c "import torch; assert torch.version.cuda, 'expected a CUDA build of torch'"

# -------------------------------------------------------------------------- runtime
FROM base AS runtime
USER app
WORKDIR /home/app
ENV PIPECAT_VIBEVOICE_SERVING_STORE_URL=/data/tts.sqlite3 \
    PIPECAT_VIBEVOICE_SERVING_CACHE_DIR=/data/cache \
    PIPECAT_VIBEVOICE_SERVING_ALLOWED_ORIGINS= \
    PIPECAT_VIBEVOICE_SERVING_TOKEN=
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["python", "-m", "pipecat_vibevoice.serving", "--host", "0.0.0.0", "--port", "8000"]

FROM runtime AS cpu-torch
COPY --from=build-cpu-torch /opt/venv /opt/venv
ENV PIPECAT_VIBEVOICE_ENGINE=auto PIPECAT_VIBEVOICE_DEVICE=cpu
RUN python -c "import asyncio; from pipecat_vibevoice.engine import TTSConfig, TTSEngine; asyncio.run(TTSEngine(TTSConfig(engine='piper')).initialize())"

FROM runtime AS gpu
COPY --from=build-gpu /opt/venv /opt/venv
ENV PIPECAT_VIBEVOICE_ENGINE=auto PIPECAT_VIBEVOICE_DEVICE=auto
# Split Piper graphs built now, so a fallback to the CPU voice starts at once.
RUN python -c "import asyncio; from pipecat_vibevoice.engine import TTSConfig, TTSEngine; asyncio.run(TTSEngine(TTSConfig(engine='piper')).initialize())"

# Last, so a plain `docker build .` gives the small Piper-only image.
FROM runtime AS cpu
COPY --from=build-cpu /opt/venv /opt/venv
ENV PIPECAT_VIBEVOICE_ENGINE=piper
RUN python -c "import asyncio; from pipecat_vibevoice.engine import TTSConfig, TTSEngine; asyncio.run(TTSEngine(TTSConfig(engine='piper')).initialize())"
