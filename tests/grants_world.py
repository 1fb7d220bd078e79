"""The grant tests' builders, now in ``tests/factories.py``; re-exported here for the tests that import them."""

from __future__ import annotations

from tests.factories import (
    CRITERIA,
    QUESTIONS,
    GrantWorld,
    complete_draft,
    login_of,
    mail_settings,
    make_call,
    make_grant_world,
    plan_capacity_from_today,
    staff,
)

__all__ = [
    "CRITERIA",
    "QUESTIONS",
    "GrantWorld",
    "complete_draft",
    "login_of",
    "mail_settings",
    "make_call",
    "make_grant_world",
    "plan_capacity_from_today",
    "staff",
]
