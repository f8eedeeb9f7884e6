# syntax=docker/dockerfile:1
#
# flashduty-bridge container image.
#
#   docker build -t flashduty-bridge:0.1.0 \
#       --build-arg REVISION="$(git rev-parse HEAD)" \
#       --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
#       --build-arg SOURCE="$(git remote get-url origin)" .
#   docker run --rm --read-only --tmpfs /tmp -p 9095:9095 \
#       -v flashduty-bridge-data:/var/lib/flashduty-bridge \
#       -e FLASHDUTY_INTEGRATION_KEY flashduty-bridge:0.1.0
#
# * Two stages: the first builds a virtualenv with the bridge and its dependencies
#   (wheels only, no compiler); the second copies that virtualenv onto a clean slim
#   base, so pip caches and build tools never reach the image.
# * Runs as the unprivileged user 10001:10001 (numeric, so runAsNonRoot can check it).
# * Read-only root filesystem: the bridge writes only to /var/lib/flashduty-bridge (its
#   outbox: mount a volume there). Bytecode is compiled at build time and
#   PYTHONDONTWRITEBYTECODE stops Python from trying to write it at run time.
# * PID 1 is the bridge itself (exec-form ENTRYPOINT, no shell): SIGTERM reaches it
#   directly; it stops accepting, finishes in-flight deliveries and exits 0.
#
# tests/test_deploy.py reads this file and runs ENTRYPOINT + CMD, the config copied
# below and the HEALTHCHECK command without Docker, on a read-only root filesystem.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
# Every dependency has a wheel for linux/amd64 and linux/arm64, so no compiler is needed.
# pip compiles the installed modules to bytecode; pip and setuptools themselves are not
# needed at run time and are removed.
RUN python -m venv /opt/flashduty-bridge \
 && /opt/flashduty-bridge/bin/pip install . \
 && /opt/flashduty-bridge/bin/pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE}
# Re-declared to be usable in this stage (an ARG before FROM is only seen by FROM lines).
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=
LABEL org.opencontainers.image.title="flashduty-bridge" \
      org.opencontainers.image.description="Durable bridge from Alertmanager webhooks to Flashduty standard alert events" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

RUN groupadd --system --gid 10001 flashduty-bridge \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/flashduty-bridge --shell /usr/sbin/nologin flashduty-bridge \
 && install --directory --owner 10001 --group 10001 --mode 0750 /var/lib/flashduty-bridge

COPY --from=build /opt/flashduty-bridge /opt/flashduty-bridge
COPY config/container.yaml /etc/flashduty-bridge/config.yaml

ENV PATH=/opt/flashduty-bridge/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 10001:10001
WORKDIR /var/lib/flashduty-bridge
VOLUME ["/var/lib/flashduty-bridge"]
EXPOSE 9095

# /-/healthy answers while the process serves; Kubernetes uses its own probes instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9095/-/healthy', timeout=3)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["flashduty-bridge"]
CMD ["serve", "--config", "/etc/flashduty-bridge/config.yaml"]
