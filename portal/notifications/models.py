"""The in-portal inbox: every notice a person gets by e-mail is also kept here."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from portal.db import UTCDateTime, utcnow


class Notification(SQLModel, table=True):
    __tablename__ = "notifications"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    subject: str = Field(max_length=300)
    body: str = Field(max_length=20_000)
    #: A portal path to open (``/applications/12``).
    link: str = Field(default="", max_length=500)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    read_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
