# syntax=docker/dockerfile:1.7
#
# The voice bot for a scaled-out deployment: bot.py on a CPU host, speaking through a
# remote TTS pool (PIPECAT_VIBEVOICE_TTS_URL; deploy/k8s/bots.yaml). Built from the
# repository root:
#
#   docker build -f deploy/docker/bot.Dockerfile -t REGISTRY/pvv-bot:cpu .
#
# The Piper extra stays in so the same image can also run with its own CPU voice (no
# --tts-url). Not built on the development machine (no Docker engine, no network for
# the pip installs); reviewed only.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[piper,pipecat]" \
 && python -c "import pipecat_vibevoice.bot, pipecat_vibevoice.services"

FROM python:${PYTHON_VERSION}-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
# libgomp1: OpenMP runtime of onnxruntime (VAD, the Piper voice) and CTranslate2 (STT).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 app \
 && useradd --uid 10001 --gid app --create-home --home-dir /home/app app
COPY --from=build /opt/venv /opt/venv
COPY bot.py /home/app/bot.py
USER app
WORKDIR /home/app
EXPOSE 7860
# Listens on PIPECAT_VIBEVOICE_HOST:PIPECAT_VIBEVOICE_PORT (set 0.0.0.0 in a pod).
ENTRYPOINT ["python", "bot.py"]
