# The portal: `portal serve` (gunicorn), `portal worker`, `portal db upgrade`, `portal check`.
# Target `standin` adds the development stand-ins (standin/: the local Stripe stand-in, which extends localstripe
# and is GPL-3.0-or-later) for the staging profile only; the `portal` target neither copies nor installs them.
FROM python:3.11-slim-bookworm AS portal
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv/portal
COPY pyproject.toml README.md ./
COPY portal ./portal
COPY static ./static
# Editable, so that the templates, migrations and static/ are read from /srv/portal.
# The translations' .mo files are built here: the server runs as `portal`, which cannot write beside the .po files.
RUN pip install -e . \
    && python -c 'from portal.i18n import compile_catalogues; compile_catalogues()' \
    && useradd --system --uid 10001 --home-dir /srv/portal portal \
    && mkdir -p /srv/portal/instance /run/prometheus \
    && chown portal /srv/portal/instance /run/prometheus
USER portal
EXPOSE 8000
CMD ["portal", "serve", "--bind", "0.0.0.0:8000"]

FROM portal AS standin
USER root
COPY standin ./standin
RUN pip install -e ./standin && mkdir -p /srv/stripe && chown portal /srv/stripe
USER portal
