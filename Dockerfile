# One image for every part of Cockpit 2FA: `twofa api` (the default), `twofa worker`,
# `twofa dashboard` and `twofa migrate`. docker-compose.yml picks the command per service.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: the project and its pinned dependencies in a virtualenv, nothing else
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/twofa
ENV PATH=/opt/twofa/bin:$PATH
WORKDIR /src
COPY pyproject.toml ./
COPY twofa ./twofa
# The compose deployment runs on PostgreSQL: fail the build, not the first request, when the
# drivers it needs (asyncpg for the app, psycopg for migrations) are not among the dependencies.
RUN pip install . \
    && python -c "import asyncpg, psycopg, twofa.cli"

# -- runtime: the virtualenv on a clean slim image, run as an unprivileged user
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 twofa \
    && useradd --system --uid 10001 --gid twofa --home-dir /var/lib/twofa \
        --create-home --shell /usr/sbin/nologin twofa
COPY --from=build /opt/twofa /opt/twofa
ENV PATH=/opt/twofa/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TWOFA_DATA_DIR=/var/lib/twofa \
    TWOFA_HOST=0.0.0.0
USER twofa:twofa
WORKDIR /var/lib/twofa
EXPOSE 8000 8501
CMD ["twofa", "api"]
