# JupyterHub from hub_config/: the hub, configurable-http-proxy, the idle culler and the single-user
# environment with the "Python 3 (Dask GPU)" kernel; Slurm's clients (sbatch, squeue, scancel) for
# HUB_SPAWNER=slurm and Dask Gateway (deploy/compose.slurm.yml). GPUs come from the NVIDIA container runtime; the
# CUDA libraries CuPy needs come as wheels (cupy-cuda13x[ctk]), so a plain Python base image serves.
#
# Node for configurable-http-proxy 5.3 (which needs Node >= 20; bookworm's nodejs is 18) comes from the official
# Node image of the same Debian release: the proxy is installed there with npm, and only the node binary and the
# proxy's folder are copied over (no npm, no NodeSource apt repository, no curl | sh). That image is built from
# nodejs.org's release tarballs, whose checksums it verifies against the release team's signatures; it links
# against bookworm's glibc, which the Python image shares. Node 22: Node 20 reached its end of life in April 2026.
FROM node:22-bookworm-slim AS node
RUN npm install -g configurable-http-proxy@5.3.0 && node --version

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# git: the pre-spawn hook clones a course's materials into the student's home (hub_config/course_materials.py).
RUN apt-get update \
    && apt-get install -y --no-install-recommends git slurm-client \
    && rm -rf /var/lib/apt/lists/*
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules/configurable-http-proxy /usr/local/lib/node_modules/configurable-http-proxy
RUN ln -s ../lib/node_modules/configurable-http-proxy/bin/configurable-http-proxy /usr/local/bin/configurable-http-proxy \
    && configurable-http-proxy --version
COPY deploy/hub-requirements.txt /tmp/hub-requirements.txt
RUN pip install -r /tmp/hub-requirements.txt
COPY hub_config /srv/hub_config
RUN useradd --system --uid 10002 --create-home --home-dir /home/hub hub \
    && mkdir -p /srv/jupyterhub && chown hub /srv/jupyterhub
USER hub
ENV HUB_STATE_DIR=/srv/jupyterhub DASK_TEMPORARY_DIRECTORY=/srv/jupyterhub/dask-scratch
EXPOSE 8000
CMD ["jupyterhub", "-f", "/srv/hub_config/jupyterhub_config.py"]
