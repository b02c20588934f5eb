# syntax=docker/dockerfile:1
# The statefulproxy image. Build: docker build -t statefulproxy .
# Run:   docker run -p 8080:8080 -e STATEFULPROXY_UPSTREAM=https://api.openai.com \
#          -e STATEFULPROXY_STORE=redis://redis:6379/0 --stop-timeout 35 statefulproxy
# Every setting is STATEFULPROXY_<NAME> (config.example.yaml); flags after the image name work too.
# deploy/README.md says what is checked without a Docker daemon and what is not.

# Both stages must use the same base: the virtualenv links to its interpreter by path.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY scripts/install-runtime ./scripts/install-runtime
# the same script tests/test_deploy.py runs: a wheel of the package, installed into a venv without pip
RUN ["bash", "scripts/install-runtime", "/opt/venv", "/src"]

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="statefulproxy" \
      org.opencontainers.image.description="Server-side conversation sessions for any stateless LLM API" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 statefulproxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin statefulproxy
COPY --from=builder /opt/venv /opt/venv
# STATEFULPROXY_UPSTREAM has no default: pass it (or routes in a config file) at run time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STATEFULPROXY_HOST=0.0.0.0 \
    STATEFULPROXY_PORT=8080 \
    STATEFULPROXY_STORE=memory://
# numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd
USER 10001:10001
EXPOSE 8080
# uvicorn stops accepting on SIGTERM and lets the turns in flight finish (shutdown_timeout, 30 s by
# default): give the container longer than that, e.g. docker run --stop-timeout 35.
STOPSIGNAL SIGTERM
# no curl in the image: the interpreter asks /healthz itself
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s%s/healthz' % (os.environ.get('STATEFULPROXY_PORT', '8080'), os.environ.get('STATEFULPROXY_HEALTH_PREFIX', '')), timeout=4)"]
ENTRYPOINT ["statefulproxy"]
CMD []
