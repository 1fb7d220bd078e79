"""The audit log: who did which privileged action, when, on what and why (append-only)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask


def init_app(app: Flask) -> None:
    """The audit log's page and ``GET /api/v1/audit``."""
    from portal.audit import api as _api  # noqa: F401  (its routes on the API blueprint)
    from portal.audit import views

    app.register_blueprint(views.bp)
