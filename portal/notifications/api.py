"""The token owner's inbox over the JSON API: the notices, newest first, and marking one read."""

from __future__ import annotations

from datetime import datetime

from flask import jsonify, request, url_for
from pydantic import BaseModel, Field
from spectree import Response
from sqlmodel import col, select

from portal.api.core import Problem, api_user, bp, spec, token_required
from portal.db import get_db
from portal.identity.models import ApiScope
from portal.notifications import services
from portal.notifications.models import Notification
from portal.pagination import MAX_PAGE_SIZE, PAGE_SIZE, KeyColumn, keyset_page

TAGS = ["notifications"]


class NotificationOut(BaseModel):
    id: int
    subject: str
    body: str
    link: str = Field(description="A portal path the notice is about (/applications/12), or empty")
    created_at: datetime
    read_at: datetime | None

    @classmethod
    def of(cls, notification: Notification) -> NotificationOut:
        return cls(
            id=notification.id,
            subject=notification.shown_subject,  # in the request's Accept-Language
            body=notification.shown_body,
            link=notification.link,
            created_at=notification.created_at,
            read_at=notification.read_at,
        )


class NotificationListQuery(BaseModel):
    unread: bool = Field(default=False, description="true: only the notices not yet read")
    cursor: str | None = Field(default=None, max_length=2000, description="`next_cursor` of the previous page")
    size: int = Field(default=PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE, description="Notices per page")


class NotificationPageOut(BaseModel):
    notifications: list[NotificationOut] = Field(description="Newest first")
    unread_count: int = Field(description="Notices not yet read, in all")
    next_cursor: str | None = Field(description="Pass as `cursor` for the following page; null on the last")
    next: str | None = Field(description="The URL of the following page; null on the last")


class MarkReadIn(BaseModel):
    """No fields: send ``{}``."""


#: Newest first: the id, descending (notices are added in time order).
NEWEST_FIRST = (KeyColumn(-col(Notification.id), int),)


@bp.get("/notifications")
@token_required(ApiScope.READ)
@spec.validate(
    query=NotificationListQuery,
    resp=Response(HTTP_200=NotificationPageOut, HTTP_400=Problem, HTTP_401=Problem, HTTP_403=Problem, HTTP_422=Problem),
    tags=TAGS,
    operation_id="list_notifications",
    security={"bearerAuth": [ApiScope.READ.value]},
)
def list_notifications():
    """The token owner's notices (the inbox), newest first, one page at a time (a cursor not handed out: 400)."""
    db, user = get_db(), api_user()
    query: NotificationListQuery = request.context.query
    stmt = select(Notification).where(Notification.user_id == user.id)
    if query.unread:
        stmt = stmt.where(col(Notification.read_at).is_(None))
    page = keyset_page(db, stmt, NEWEST_FIRST, lambda n: (-n.id,), cursor=query.cursor, size=query.size)
    following = None
    if page.next_cursor:
        extra = {"unread": "true"} if query.unread else {}
        following = url_for(request.endpoint or "", cursor=page.next_cursor, size=query.size, **extra)
    body = NotificationPageOut(
        notifications=[NotificationOut.of(n) for n in page.items],
        unread_count=services.unread_count(db, user),
        next_cursor=page.next_cursor,
        next=following,
    )
    return jsonify(body.model_dump(mode="json"))


@bp.post("/notifications/<int:notification_id>/read")
@token_required(ApiScope.WRITE)
@spec.validate(
    json=MarkReadIn,
    resp=Response(HTTP_200=NotificationOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_404=Problem, HTTP_422=Problem),
    tags=TAGS,
    operation_id="mark_notification_read",
    security={"bearerAuth": [ApiScope.WRITE.value]},
)
def mark_notification_read(notification_id: int):
    """Mark one of the token owner's notices read (again: no change); another's reads as missing (404)."""
    notification = services.mark_read(get_db(), api_user(), notification_id)
    return jsonify(NotificationOut.of(notification).model_dump(mode="json"))
