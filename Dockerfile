# stepq worker image: `docker build -t stepq .`, then `docker run stepq worker myapp.jobs:client`.
# The entrypoint is the `stepq` command; the app's code is imported from the working directory
# (/app), which also holds the examples (`stepq worker examples.shop:client`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# stepq is built in /src and installed as a wheel (one import package, `stepq`); the sources do not
# stay on the image, so an app's own `sdk/`, `runtime/` or `workers/` folders in /app cannot clash.
WORKDIR /src

# Dependencies first, from pyproject.toml alone, so that a code change does not reinstall them.
COPY pyproject.toml ./
RUN mkdir sdk runtime workers \
    && touch README.md sdk/__init__.py runtime/__init__.py workers/__init__.py \
    && pip install . \
    && pip uninstall -y stepq \
    && rm -rf /src/*

COPY pyproject.toml README.md ./
COPY sdk ./sdk
COPY runtime ./runtime
COPY workers ./workers
RUN pip install --no-deps . && cd / && rm -rf /src

WORKDIR /app
COPY examples ./examples

# Workers need no privileges.
RUN useradd --create-home --uid 10001 stepq
USER stepq

# Exec form: stepq gets SIGTERM itself, so a stopping container drains its in-flight steps.
ENTRYPOINT ["stepq"]
CMD ["--help"]
