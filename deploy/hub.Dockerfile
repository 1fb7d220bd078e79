# JupyterHub from hub_config/: the hub, configurable-http-proxy, the idle culler and the single-user
# environment with the "Python 3 (Dask GPU)" kernel; Slurm's clients (sbatch, squeue, scancel) for
# HUB_SPAWNER=slurm and Dask Gateway (deploy/compose.slurm.yml). GPUs come from the NVIDIA container runtime; the
# CUDA libraries CuPy needs come as wheels (cupy-cuda13x[ctk]), so a plain Python base image serves.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends nodejs npm slurm-client \
    && npm install -g configurable-http-proxy@5.3.0 \
    && apt-get purge -y npm && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* /root/.npm
COPY deploy/hub-requirements.txt /tmp/hub-requirements.txt
RUN pip install -r /tmp/hub-requirements.txt
COPY hub_config /srv/hub_config
RUN useradd --system --uid 10002 --create-home --home-dir /home/hub hub \
    && mkdir -p /srv/jupyterhub && chown hub /srv/jupyterhub
USER hub
ENV HUB_STATE_DIR=/srv/jupyterhub DASK_TEMPORARY_DIRECTORY=/srv/jupyterhub/dask-scratch
EXPOSE 8000
CMD ["jupyterhub", "-f", "/srv/hub_config/jupyterhub_config.py"]
