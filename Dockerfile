# stepq worker image: `docker build -t stepq .`, then `docker run stepq worker myapp.jobs:client`.
# The entrypoint is the `stepq` command; the app's code is imported from the working directory
# (/app), which also holds the examples (`stepq worker examples.shop:client`).
#
# Pinned: the base image by its exact version (add `@sha256:...` where a registry is reachable:
# `docker buildx imagetools inspect python:3.11.15-slim-bookworm`), and every Python package by
# version and hash (deploy/docker/*.lock, made by scripts/lock-image from pyproject.toml).
# PYTHON_IMAGE may name any Debian-like image with python3 and its venv module: the README's
# "Containers" section builds one with debootstrap (deploy/docker/local-base.sh) where no registry is.
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm

# -- build: a wheelhouse (the only stage that downloads), then the venv installed from it offline --
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src

# Dependencies first, from the lock files alone, so that a code change does not download them again.
# --require-hashes: every file is checked against the hash the lock recorded.
# Behind a TLS-inspecting proxy, pass its CA certificate (PEM text, not a secret) with
# --build-arg EXTRA_CA_CERT="$(cat proxy-ca.crt)": pip trusts it next to the system's CAs here, and it
# stays in this stage, out of the image.
ARG EXTRA_CA_CERT=""
COPY deploy/docker/requirements.lock deploy/docker/build.lock ./
RUN python3 -m venv /opt/stepq \
    && if [ -n "$EXTRA_CA_CERT" ]; then \
        { cat /etc/ssl/certs/ca-certificates.crt; printf '%s\n' "$EXTRA_CA_CERT"; } > /tmp/ca.pem \
        && export PIP_CERT=/tmp/ca.pem; fi \
    && /opt/stepq/bin/pip download --require-hashes --no-deps --dest /wheels \
        -r requirements.lock -r build.lock \
    && rm -f /tmp/ca.pem

# stepq's own wheel, built offline with the pinned setuptools.
COPY pyproject.toml README.md ./
COPY sdk ./sdk
COPY runtime ./runtime
COPY workers ./workers
RUN /opt/stepq/bin/pip install --no-index --find-links /wheels --require-hashes -r build.lock \
    && /opt/stepq/bin/pip wheel --no-index --find-links /wheels --no-build-isolation --no-deps \
        --wheel-dir /wheels/stepq . \
    && /opt/stepq/bin/pip uninstall --yes setuptools

# The runtime venv, offline: the locked dependencies (hash-checked), then stepq with no dependency
# resolution of its own; `pip check` fails the build if the lock misses a requirement.
RUN /opt/stepq/bin/pip install --no-index --find-links /wheels --require-hashes -r requirements.lock \
    && /opt/stepq/bin/pip install --no-index --no-deps /wheels/stepq/stepq-*.whl \
    && /opt/stepq/bin/pip check

# -- runtime: the base, the venv, the examples ------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/stepq/bin:$PATH

# The venv has the same path and interpreter as in the build stage; the sources do not come along,
# so an app's own `sdk/`, `runtime/` or `workers/` folders in /app cannot clash with stepq's.
COPY --from=build /opt/stepq /opt/stepq

WORKDIR /app
COPY examples ./examples

# Workers need no privileges.
RUN useradd --create-home --uid 10001 stepq
USER stepq

# Exec form: stepq gets SIGTERM itself, so a stopping container drains its in-flight steps.
ENTRYPOINT ["stepq"]
CMD ["--help"]
