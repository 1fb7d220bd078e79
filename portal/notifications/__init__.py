"""The notices the portal sends (in the inbox and by e-mail)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask


def init_app(app: Flask) -> None:
    """The inbox."""
    from portal.notifications import api as _api  # noqa: F401  (its routes on the API blueprint)
    from portal.notifications import views

    app.register_blueprint(views.bp)
