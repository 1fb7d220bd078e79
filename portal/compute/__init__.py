"""Notebooks on the factory's GPUs, portal side: the OAuth2 server the JupyterHub logs users in with, and
the spawn check the hub asks before it starts a server (see README, "Notebooks (portal side)")."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from portal.worker import AddJob


def init_app(app: Flask) -> None:
    """The notebook pages, the hub's API routes and OAuth2 server, and the course pages' launcher
    (``portal.start_notebook``: ``classroom`` may not import ``compute``, which imports it for the seats)."""
    from portal.compute import api as _api  # noqa: F401  (its routes on the API blueprint)
    from portal.compute import launch, oauth, views

    app.register_blueprint(views.bp)
    app.extensions["portal.start_notebook"] = launch.start_notebook
    oauth.init_app(app)


def register_jobs(add_job: AddJob) -> None:
    from portal.compute.launch import meter_job

    add_job("meter_notebooks", every=60, run=meter_job, shared=True, stoppable=True)
