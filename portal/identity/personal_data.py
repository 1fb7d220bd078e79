"""A person's data under the GDPR: the export of everything the portal holds about them (Art. 15, 20), their
erasure (Art. 17) and the retention periods the worker enforces (Art. 5(1)(e)). docs/personal-data.md says what is
kept, why and how long.

The export and the erasure find the person's rows through the schema's foreign keys to ``users``, so a table added
later is exported without a change here; they touch other packages' tables only through SQLAlchemy's table
objects, never their models (``identity`` imports no other domain package).
"""

from __future__ import annotations

import base64
from datetime import date, datetime, timedelta
from enum import Enum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, SQLModel

from portal.audit import services as audit
from portal.audit.models import AuditAction
from portal.authz import Action, require
from portal.config import Settings
from portal.db import utcnow
from portal.errors import Conflict
from portal.identity.models import ApiToken, ExternalIdentity, Login, RoleGrant, User, WebSession

#: Columns never exported: digests of secrets (tokens, session keys, invitation links) and one-time codes.
SECRET_COLUMNS = frozenset({"digest", "key_digest", "code", "nonce", "code_challenge"})
#: Tables whose rows point at the person only as the one who acted on someone else's record (a price change,
#: a role granted to another person): not the person's data, and not exported.
ACTOR_ONLY_COLUMNS = frozenset({"granted_by_id", "changed_by_id", "invited_by_id", "accepted_by_id"})


def _table(name: str) -> sa.Table:
    return SQLModel.metadata.tables[name]


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def _user_columns() -> list[tuple[sa.Table, sa.Column[Any]]]:
    """Every (table, column) whose foreign key names ``users.id``, in the schema's dependency order."""
    found = []
    for table in SQLModel.metadata.sorted_tables:
        for column in table.columns:
            if column.name in ACTOR_ONLY_COLUMNS:
                continue
            if any(fk.target_fullname == "users.id" for fk in column.foreign_keys):
                found.append((table, column))
    return found


def export_personal_data(db: Session, user: User) -> dict[str, Any]:
    """Everything the portal holds about ``user``, as JSON-ready data: their account, and from every table the rows
    that belong to them or record what they did, with secrets' digests left out."""
    users = _table("users")
    tables: dict[str, list[dict[str, Any]]] = {}
    for table, column in _user_columns():
        rows = db.connection().execute(sa.select(table).where(column == user.id).order_by(*table.primary_key))
        exported = [
            {key: _json_value(value) for key, value in row._mapping.items() if key not in SECRET_COLUMNS}
            for row in rows
        ]
        if exported:
            tables.setdefault(table.name, []).extend(exported)
    if user.email:
        invitations = _table("invitations")
        rows = db.connection().execute(
            sa.select(invitations).where(sa.func.lower(invitations.c.email) == user.email.lower())
        )
        pending = [{k: _json_value(v) for k, v in r._mapping.items() if k not in SECRET_COLUMNS} for r in rows]
        if pending:
            tables["invitations"] = pending
    about_them = _table("audit_events")
    rows = db.connection().execute(
        sa.select(about_them)
        .where(about_them.c.object_type == "users", about_them.c.object_id == user.id)
        .order_by(about_them.c.id)
    )
    events = {e["id"]: e for e in tables.get("audit_events", [])}
    events |= {r.id: {k: _json_value(v) for k, v in r._mapping.items()} for r in rows}
    if events:
        tables["audit_events"] = [events[k] for k in sorted(events)]
    account = db.connection().execute(sa.select(users).where(users.c.id == user.id)).one()
    return {
        "exported_at": utcnow().isoformat(),
        "user": {k: _json_value(v) for k, v in account._mapping.items()},
        "tables": dict(sorted(tables.items())),
    }


def erased_name(user_id: int) -> str:
    return f"Erased user {user_id}"


def erase_user(db: Session, actor: User | None, user: User, *, reason: str) -> dict[str, int]:
    """Erase ``user``'s personal data, keeping the records the factory must keep valid.

    The user row stays (ledger entries, invoices, orders, memberships, reviews and the audit log point at it) but is
    pseudonymised: name ``Erased user <id>``, no e-mail, deactivated. Their linked identities, login records,
    sessions, hub tokens, notifications, factory roles and pending invitations are deleted; API tokens revoked.
    Invoices (legal retention), the ledger and the append-only audit log are left as they are. ``actor`` None
    means the command line; otherwise an admin. Returns how many rows of each kind went."""
    if actor is not None:
        require(db, actor, Action.GRANT_ROLES)
        if actor.id == user.id:
            raise Conflict("You cannot erase yourself; ask another admin.")
    reason = audit.require_reason(reason)
    if user.display_name == erased_name(user.id) and user.email is None:
        raise Conflict(f"User {user.id} is already erased.")
    now = utcnow()
    conn = db.connection()
    removed: dict[str, int] = {}

    def gone(name: str, statement: sa.Executable) -> None:
        removed[name] = int(conn.execute(statement).rowcount or 0)

    codes, tokens, invitations = _table("oauth_codes"), _table("oauth_tokens"), _table("invitations")
    gone("oauth_codes", sa.delete(codes).where(codes.c.user_id == user.id))
    gone("oauth_tokens", sa.delete(tokens).where(tokens.c.user_id == user.id))
    gone("web_sessions", sa.delete(WebSession.__table__).where(WebSession.__table__.c.user_id == user.id))
    gone("logins", sa.delete(Login.__table__).where(Login.__table__.c.user_id == user.id))
    gone(
        "external_identities",
        sa.delete(ExternalIdentity.__table__).where(ExternalIdentity.__table__.c.user_id == user.id),
    )
    gone("notifications", sa.delete(_table("notifications")).where(_table("notifications").c.user_id == user.id))
    gone("role_grants", sa.delete(RoleGrant.__table__).where(RoleGrant.__table__.c.user_id == user.id))
    if user.email:
        gone(
            "invitations",
            sa.delete(invitations).where(
                sa.func.lower(invitations.c.email) == user.email.lower(), invitations.c.accepted_at.is_(None)
            ),
        )
    api_tokens = ApiToken.__table__
    gone(
        "api_tokens_revoked",
        sa.update(api_tokens)
        .where(api_tokens.c.user_id == user.id, api_tokens.c.revoked_at.is_(None))
        .values(revoked_at=now),
    )
    db.expire_all()
    user = db.get(User, user.id)
    user.display_name = erased_name(user.id)
    user.email = None
    user.is_active = False
    user.last_login_at = None
    audit.record(
        db,
        actor or "cli",
        AuditAction.USER_ERASED,
        user,
        summary=f"The personal data of user {user.id} is erased; the user is pseudonymised",
        reason=reason,
        details={"removed": removed},
    )
    db.commit()
    return removed


def enforce_retention_periods(db: Session, settings: Settings) -> int:
    """Delete what the retention settings say is kept no longer; returns how many rows went.

    Login records (with the attributes the provider asserted, such as a person identifier or birth date) after
    ``login_retention_days``, unless a kept session still refers to one; hub authorization codes and tokens
    ``oauth_retention_days`` after they expired; ended or expired sessions after ``web_session_retention_days``
    (unless a kept hub token refers to one); notifications after ``notification_retention_days``."""
    now = utcnow()
    conn = db.connection()
    codes, tokens, notifications = _table("oauth_codes"), _table("oauth_tokens"), _table("notifications")
    sessions, logins = WebSession.__table__, Login.__table__
    oauth_cutoff = now - timedelta(days=settings.oauth_retention_days)
    session_cutoff = now - timedelta(days=settings.web_session_retention_days)
    statements = [
        sa.delete(codes).where(codes.c.expires_at < oauth_cutoff),
        sa.delete(tokens).where(tokens.c.expires_at < oauth_cutoff),
        sa.delete(sessions).where(
            sa.or_(sessions.c.ended_at < session_cutoff, sessions.c.expires_at < session_cutoff),
            ~sessions.c.id.in_(sa.select(codes.c.web_session_id).where(codes.c.web_session_id.is_not(None))),
            ~sessions.c.id.in_(sa.select(tokens.c.web_session_id).where(tokens.c.web_session_id.is_not(None))),
        ),
        sa.delete(logins).where(
            logins.c.logged_in_at < now - timedelta(days=settings.login_retention_days),
            ~logins.c.id.in_(sa.select(sessions.c.login_id).where(sessions.c.login_id.is_not(None))),
        ),
        sa.delete(notifications).where(
            notifications.c.created_at < now - timedelta(days=settings.notification_retention_days)
        ),
    ]
    removed = sum(int(conn.execute(statement).rowcount or 0) for statement in statements)
    db.commit()
    return removed
