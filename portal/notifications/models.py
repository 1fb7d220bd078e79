"""The in-portal inbox: every notice a person gets by e-mail is also kept here."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from portal.db import UTCDateTime, utcnow
from portal.messages import current_locale, from_json, render


class Notification(SQLModel, table=True):
    __tablename__ = "notifications"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    #: As it was written for the person when it was sent (their e-mail said this).
    subject: str = Field(max_length=300)
    body: str = Field(max_length=20_000)
    #: The same notice as ``portal.messages`` texts (``{"subject": ..., "body": ...}``, see ``messages.to_json``),
    #: so that the inbox shows it in the language its reader has when they read it; None for older notices.
    message: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    #: A portal path to open (``/applications/12``).
    link: str = Field(default="", max_length=500)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    read_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

    def subject_in(self, language: str) -> str:
        if self.message is None:
            return self.subject
        return render(from_json(self.message["subject"]), language)[:300]

    def body_in(self, language: str) -> str:
        if self.message is None:
            return self.body
        return render(from_json(self.message["body"]), language)

    @property
    def shown_subject(self) -> str:
        """The subject in the language of the request that shows it."""
        return self.subject_in(current_locale())

    @property
    def shown_body(self) -> str:
        return self.body_in(current_locale())
