# One image for every lowtide component: `lowtide platform`, `lowtide activator` and
# `lowtide agent` (whose replicas run in the agent's container). docker-compose.yml runs it.
#
#   docker build -t lowtide:dev .
#   docker build -t lowtide:dev --build-arg BASE_IMAGE=python:3.12-slim .
#
# BASE_IMAGE needs python3 with venv and pip, and Python's minor version must be the one the
# SDK clients use (deploy refuses a mismatch). Where no registry is reachable,
# scripts/build-local-base makes one (Debian bookworm, Python 3.11).
# PIP_CERT: path of an extra CA bundle for pip, mounted into the build by the caller
# (e.g. podman build -v "$PIP_CERT:/run/extra-ca.crt:ro" --build-arg PIP_CERT=/run/extra-ca.crt).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG PIP_CERT=""
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/lowtide \
    PATH=/opt/lowtide/bin:$PATH \
    LOWTIDE_HOME=/var/lib/lowtide \
    BENTOML_DO_NOT_TRACK=True

RUN python3 -m venv /opt/lowtide \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /home/lowtide lowtide \
 && mkdir -p /var/lib/lowtide/blobs \
 && chown -R lowtide:lowtide /var/lib/lowtide

# Dependencies first: this layer is rebuilt only when pyproject.toml changes.
WORKDIR /src
COPY pyproject.toml docker/requirements.py ./
RUN if [ -n "$PIP_CERT" ]; then export PIP_CERT; else unset PIP_CERT; fi \
 && pip install "tomli; python_version < '3.11'" \
 && python3 requirements.py pyproject.toml >requirements.txt \
 && pip install -r requirements.txt "setuptools>=68" wheel

# Then the source: a code change rebuilds from here on, in seconds.
COPY docker/entrypoint.sh /usr/local/bin/lowtide-entrypoint
COPY docker/healthcheck.py /usr/local/bin/lowtide-healthcheck
COPY README.md ./
COPY lowtide ./lowtide
RUN pip install --no-deps --no-build-isolation . \
 && rm -rf /src/build /src/*.egg-info

USER lowtide
WORKDIR /home/lowtide
# The entrypoint knows which component runs, so one check fits all three (a compose file
# may still name the port: `lowtide-healthcheck 8081`).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["lowtide-healthcheck"]
ENTRYPOINT ["lowtide-entrypoint"]
CMD ["--help"]
