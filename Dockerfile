# syntax=docker/dockerfile:1
# mailsync application image: `mailsync worker` by default; the gateway uses the same image.

# --- Build stage: install the project and its dependencies into a virtualenv. ---
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The whole context (.dockerignore drops .venv, .git, caches, local state): pyproject.toml decides
# what gets installed (cli, worker, config + workflows, activities, providers, store, devkit).
# This stage is thrown away, so nothing here but the venv reaches the final image.
COPY . .
# pip byte-compiles what it installs: kept, the runtime user cannot write .pyc files.
RUN pip install --no-cache-dir .

# --- Runtime stage: the virtualenv only; no sources, build backend or pip cache. ---
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 mailsync \
 && useradd --system --uid 10001 --gid mailsync --create-home --home-dir /home/mailsync \
      --shell /usr/sbin/nologin mailsync
COPY --from=build /opt/venv /opt/venv
USER mailsync
WORKDIR /home/mailsync
CMD ["mailsync", "worker"]
