# mimeeq-connector: a small, non-root image of `mimeeq-connector serve`.
#
#   docker build -t mimeeq-connector:0.1.0 .
#   docker run --rm -p 8080:8080 --stop-timeout 40 -e DEMO_WEBHOOK_TOKEN=... \
#     -v mimeeq-data:/var/lib/mimeeq-connector mimeeq-connector:0.1.0
#
# Build and run are documented in the README's "Container and deployment" section; the command
# this image runs (ENTRYPOINT + CMD) is the one written there, and tests/test_deploy.py keeps the
# two the same. Kubernetes and compose examples: deploy/.

# One base for both stages: the virtualenv built in the first is copied into the second, and its
# interpreter link (/usr/local/bin/python) must point at the same Python there. Pin a digest
# (python:3.11.14-slim-trixie@sha256:...) in your own builds for byte-for-byte reproducibility.
ARG PYTHON_IMAGE=python:3.11.14-slim-trixie

# --- builder: the project and its dependencies in a virtualenv ---------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv

WORKDIR /src
# The dependencies first, in a layer of their own that a code change does not rebuild: exactly
# the versions in requirements.lock (`make lock` writes it), every file checked against its hash,
# so two builds months apart install the same set. Every one ships wheels for linux/amd64 and
# linux/arm64 (aiohttp, orjson, pydantic-core, uvloop, asyncpg, ...): no compiler is needed.
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --require-hashes --no-deps -r requirements.lock

# Then the project alone (--no-deps: nothing unlocked sneaks in); `pip check` fails the build
# when the lock no longer satisfies pyproject.toml. pip compiles the bytecode here, once, so the
# read-only runtime never needs to. pip and setuptools are not needed at run time: out of the
# venv they go (the base image keeps its own pip).
# Only what the package needs (see .dockerignore): pyproject.toml names README.md as its readme.
COPY pyproject.toml README.md ./
COPY connector/ connector/
COPY adapters/ adapters/
RUN /opt/venv/bin/pip install --no-deps . \
    && /opt/venv/bin/python -m pip check \
    && /opt/venv/bin/python -m pip uninstall --yes pip setuptools \
    && /opt/venv/bin/mimeeq-connector --version

# --- runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="mimeeq-connector" \
      org.opencontainers.image.description="Keeps CRMs in step with Mimeeq contacts" \
      org.opencontainers.image.licenses="MIT"

# A fixed, numeric, unprivileged user: Kubernetes' runAsNonRoot can only verify a numeric USER,
# and a bind-mounted data folder is `chown 10001:10001` on the host. The data folder is created
# and owned here so that a fresh named volume starts with the right owner.
RUN groupadd --system --gid 10001 connector \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/mimeeq-connector \
       --no-create-home --shell /usr/sbin/nologin connector \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/mimeeq-connector \
    && install -d -m 0755 /etc/mimeeq-connector /app

COPY --from=builder /opt/venv /opt/venv
# The shipped mappings, outside the package: configs name them as /app/mappings/<file>.yaml (or
# extend them). The default config is for trying the image out; mount your own over it.
COPY mappings/ /app/mappings/
COPY deploy/docker-config.yaml /etc/mimeeq-connector/config.yaml

ENV PATH=/opt/venv/bin:$PATH \
    CONNECTOR_CONFIG=/etc/mimeeq-connector/config.yaml \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CONNECTOR_HEALTHCHECK_URL=http://127.0.0.1:8080/healthz

# SQLite database, its lock and WAL files, and the CSV target's files. One container per volume:
# the connector refuses to serve a SQLite file another process serves.
VOLUME ["/var/lib/mimeeq-connector"]
WORKDIR /var/lib/mimeeq-connector
USER 10001:10001
EXPOSE 8080

# SIGTERM drains: /readyz and new webhooks get 503 at once, pushes in flight get
# server.drain_timeout seconds (25 by default), and the rest goes back to the queue.
# Docker's own stop timeout is 10 s: run with `--stop-timeout 40` (compose: stop_grace_period),
# and in Kubernetes keep terminationGracePeriodSeconds above drain_timeout (deploy/ uses 45).
STOPSIGNAL SIGTERM

# Liveness only (no curl in slim images: Python's stdlib). Readiness is /readyz, for orchestrators.
# Set CONNECTOR_HEALTHCHECK_URL when the config moves server.port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['CONNECTOR_HEALTHCHECK_URL'], timeout=4)"]

ENTRYPOINT ["mimeeq-connector"]
CMD ["serve", "--log-format", "json"]
