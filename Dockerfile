# stepq worker image: `docker build -t stepq .`, then `docker run stepq worker myapp.jobs:client`.
# The entrypoint is the `stepq` command; the app's code is imported from the working directory
# (/app), which also holds the examples (`stepq worker examples.shop:client`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so that a code change does not reinstall them.
COPY pyproject.toml ./
RUN mkdir sdk runtime workers \
    && touch sdk/__init__.py runtime/__init__.py workers/__init__.py \
    && pip install . \
    && pip uninstall -y stepq \
    && rm -rf sdk runtime workers build *.egg-info

COPY sdk ./sdk
COPY runtime ./runtime
COPY workers ./workers
COPY examples ./examples
RUN pip install --no-deps . && rm -rf build *.egg-info

# Workers need no privileges.
RUN useradd --create-home --uid 10001 stepq
USER stepq

# Exec form: stepq gets SIGTERM itself, so a stopping container drains its in-flight steps.
ENTRYPOINT ["stepq"]
CMD ["--help"]
