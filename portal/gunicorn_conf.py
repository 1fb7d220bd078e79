"""gunicorn's settings for ``portal serve`` (``--config python:portal.gunicorn_conf``).

``PROMETHEUS_MULTIPROC_DIR`` is always set (``portal serve`` makes a temporary folder when it is unset, removed
when gunicorn exits): the workers write their metrics to files there and ``/metrics`` adds them up; the folder is
emptied when gunicorn starts and a dead worker's live gauges are dropped. With ``PORTAL_LOG_FORMAT=json``
gunicorn's own lines are JSON too (the portal logs each request itself, with its id).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def on_starting(server: Any) -> None:
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        for stale in Path(folder).glob("*.db"):
            stale.unlink()


def on_exit(server: Any) -> None:
    own = os.environ.get("PORTAL_SERVE_METRICS_DIR")  # portal.cli.OWN_METRICS_DIR
    if own and own == os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        import shutil

        shutil.rmtree(own, ignore_errors=True)


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


if os.environ.get("PORTAL_LOG_FORMAT") == "json":
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": "{levelname}{name}{message}",
                "style": "{",
                "timestamp": "time",
                "rename_fields": {"levelname": "level", "name": "logger"},
            }
        },
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"level": "WARNING", "handlers": []},
        "loggers": {
            "gunicorn.error": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "gunicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},  # portal.request has them
        },
    }
