# syntax=docker/dockerfile:1
# TradeGuard sidecar image: `docker build -t tradeguard:0.1.0 .`
# Build stage: a virtualenv with the project installed exactly as the README says (`pip install .`).
# Final stage: the same slim base, that virtualenv (pip and setuptools removed), a non-root user, /data.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/tradeguard
ENV PATH=/opt/tradeguard/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY client/python ./client/python
COPY proto/python ./proto/python
RUN pip install . \
 && pip uninstall --yes setuptools pip

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 tradeguard \
 && useradd --system --uid 10001 --gid tradeguard --home-dir /data --no-create-home \
            --shell /usr/sbin/nologin tradeguard \
 && mkdir -p /data \
 && chown tradeguard:tradeguard /data
COPY --from=build /opt/tradeguard /opt/tradeguard
# Settings the image relies on (tests/integration/test_security.py reads these ENV lines):
# gRPC on every interface, which requires trader credentials (per-bot tokens, a secret file) and the admin
# token (another secret file, never given to a bot) — README.md, "Security"; the image does not start
# without both. Metrics only on loopback: /metrics has no auth and shows every trader's PnL, so serving it
# beyond the pod is an explicit choice (TRADEGUARD_METRICS_LISTEN=0.0.0.0:9464 with a NetworkPolicy, see
# deploy/kubernetes/). The SQLite file under the /data volume (WORKDIR) unless TRADEGUARD_DATABASE_URL, DB_URL,
# DATABASE_URL or DB_HOST... name PostgreSQL. A settings file: mount it and set TRADEGUARD_CONFIG (README, "Settings").
ENV PATH=/opt/tradeguard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TRADEGUARD_LISTEN=0.0.0.0:50051 \
    TRADEGUARD_METRICS_LISTEN=127.0.0.1:9464 \
    TRADEGUARD_ADMIN_TOKEN_FILE=/run/secrets/tradeguard_admin_token \
    TRADEGUARD_CREDENTIALS_FILE=/run/secrets/tradeguard_credentials \
    TRADEGUARD_LOG_JSON=true \
    TRADEGUARD_HEALTH_ADDRESS=127.0.0.1:50051
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 CMD ["tradeguard", "health"]
ENTRYPOINT ["tradeguard"]
CMD ["serve"]
