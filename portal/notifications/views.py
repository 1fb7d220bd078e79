"""The inbox: every notice the portal sent, newest first; and the unread count in the navigation."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from portal.db import get_db
from portal.forms import ActionForm
from portal.notifications import services
from portal.web import actor, safe_next

bp = Blueprint("notifications", __name__)


@bp.app_context_processor
def _unread_notifications() -> dict[str, Any]:
    """``unread_notifications()`` for the navigation: one COUNT query, and only when a page asks for it."""

    def unread_notifications() -> int:
        if not current_user.is_authenticated:
            return 0
        return services.unread_count(get_db(), actor())

    return {"unread_notifications": unread_notifications}


@bp.get("/inbox")
@login_required
def inbox():
    return render_template("notifications/inbox.html", notifications=services.inbox(get_db(), actor(), limit=100))


@bp.post("/inbox/<int:notification_id>/read")
@login_required
def mark_read(notification_id: int):
    """Mark a notice read; with ``open`` set, go on to the page it is about."""
    if not ActionForm().validate_on_submit():
        abort(400)
    notification = services.mark_read(get_db(), actor(), notification_id)
    if request.form.get("open") and notification.link:
        return redirect(safe_next(notification.link, url_for("notifications.inbox")))
    return redirect(url_for("notifications.inbox"))
