"""Audit events: one append-only row per privileged action, written in the action's own transaction.

The database refuses to change or delete a row (triggers in migration 0009 on SQLite and PostgreSQL).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from portal.db import StrEnumType, UTCDateTime, utcnow


class AuditAction(StrEnum):
    # factory roles and staff credentials
    ROLE_GRANTED = "role_granted"
    ROLE_REVOKED = "role_revoked"
    USER_DEACTIVATED = "user_deactivated"
    USER_ERASED = "user_erased"
    AGENT_TOKEN_CREATED = "agent_token_created"  # noqa: S105  (an action name, not a secret)
    ORGANISATION_VERIFIED = "organisation_verified"
    OPERATOR_SITE_ASSIGNED = "operator_site_assigned"
    # sites, resources, capacity
    SITE_CREATED = "site_created"
    SITE_UPDATED = "site_updated"
    RESOURCE_CREATED = "resource_created"
    CAPACITY_CHANGED = "capacity_changed"
    OVERBOOKING_CHANGED = "overbooking_changed"
    # allocations and the ledger
    ALLOCATION_OPENED = "allocation_opened"
    ALLOCATION_ADJUSTED = "allocation_adjusted"
    ALLOCATION_SUSPENDED = "allocation_suspended"
    ALLOCATION_RESUMED = "allocation_resumed"
    SLURM_ACCOUNT_MAPPED = "slurm_account_mapped"
    SLURM_USER_SET = "slurm_user_set"
    # calls for proposals
    CALL_CREATED = "call_created"
    CALL_STATE_CHANGED = "call_state_changed"
    APPLICATION_ACCEPTED = "application_accepted"
    APPLICATION_REJECTED = "application_rejected"
    TRANCHE_RELEASED = "tranche_released"
    # the marketplace
    OFFERING_CREATED = "offering_created"
    OFFERING_UPDATED = "offering_updated"
    OFFERING_STATE_CHANGED = "offering_state_changed"
    PRICE_CHANGED = "price_changed"
    REFUND_ISSUED = "refund_issued"

    @property
    def label(self) -> str:
        return self.value.replace("_", " ").capitalize()


#: The tables whose rows privileged actions act on, as ``object_type`` names them.
OBJECT_TYPES = (
    "allocations",
    "api_tokens",
    "applications",
    "awards",
    "calls",
    "capacity_periods",
    "offerings",
    "orders",
    "organisations",
    "resources",
    "sites",
    "slurm_accounts",
    "slurm_users",
    "users",
)


class AuditEvent(SQLModel, table=True):
    """One privileged action; never updated, never deleted."""

    __tablename__ = "audit_events"
    __table_args__ = (
        sa.Index("ix_audit_events_action_id", "action", "id"),
        sa.Index("ix_audit_events_object_type_object_id_id", "object_type", "object_id", "id"),
        sa.Index("ix_audit_events_actor_user_id_id", "actor_user_id", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    #: When the action happened (UTC).
    occurred_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    #: The person who acted; None for the command line, the worker or a payment provider's webhook.
    actor_user_id: int | None = Field(default=None, foreign_key="users.id")
    #: Who acted, as shown: the person's name and e-mail at the time, or ``cli``, ``system``, ``stripe``.
    actor_label: str = Field(max_length=400)
    action: AuditAction = Field(sa_type=StrEnumType(AuditAction, 40))
    #: The table of the object acted on (``allocations``, ``offerings``, ``users``) and its id.
    object_type: str = Field(max_length=64)
    object_id: int | None = Field(default=None)
    #: One line a person reads: what changed.
    summary: str = Field(max_length=1000)
    #: Why, in the actor's words, where the action asks for a reason.
    reason: str = Field(default="", max_length=5000)
    #: Values before and after, amounts, ids: whatever the summary leaves out.
    details: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    #: The web request behind the action: its ``X-Request-ID`` and the client's address, where there was one.
    request_id: str | None = Field(default=None, max_length=100)
    ip_address: str | None = Field(default=None, max_length=64)
