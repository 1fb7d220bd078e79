"""Logins, identity linking, factory roles and API tokens."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from portal.audit import services as audit
from portal.audit.models import AuditAction
from portal.authz import Action, factory_roles, require
from portal.config import AssuranceLevel, OIDCProvider
from portal.db import utcnow
from portal.errors import (
    AuthenticationRequired,
    Conflict,
    InsufficientAssurance,
    InvalidInput,
    LoginRefused,
    NotAuthorised,
    NotFound,
)
from portal.identity.models import (
    PRIVILEGED_SCOPES,
    ApiScope,
    ApiToken,
    ExternalIdentity,
    FactoryRole,
    Login,
    RoleGrant,
    User,
    WebSession,
)
from portal.messages import N_, Message
from portal.pagination import PAGE_SIZE, KeyColumn, Page, keyset_page, search_pattern

LIST_ATTRIBUTES = ("external_affiliation", "entitlement")


@dataclass(frozen=True)
class AssertedLogin:
    """What a provider asserted about one login, after its ID token was verified."""

    provider: OIDCProvider
    subject: str
    acr: str | None
    level: AssuranceLevel
    amr: list[str]
    auth_time: datetime | None
    attributes: dict[str, Any]


def read_assertion(provider: OIDCProvider, claims: dict[str, Any]) -> AssertedLogin:
    """Map verified claims to the portal's view of a login; refuse unknown or too-low levels of assurance."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise LoginRefused(Message(N_("The provider did not say who you are (no subject in the ID token).")))
    acr = claims.get("acr")
    acr = str(acr) if acr is not None else None
    level = provider.level_for(acr)
    if level is None:
        raise InsufficientAssurance(
            Message(
                N_("%(provider)s reported a level of assurance (%(acr)s) this portal does not recognise."),
                provider=provider.label,
                acr=str(acr),
            )
        )
    if level < provider.min_acr:
        raise InsufficientAssurance(
            Message(
                N_(
                    "%(provider)s confirmed your identity at level '%(level)s', but this portal needs at least "
                    "'%(needed)s' from it. Log in again with a stronger method (for example an ID card "
                    "or Smart-ID) or choose another provider."
                ),
                provider=provider.label,
                level=str(level),
                needed=str(provider.min_acr),
            )
        )
    amr = claims.get("amr") or []
    if isinstance(amr, str):
        amr = [amr]
    auth_time = claims.get("auth_time")
    return AssertedLogin(
        provider=provider,
        subject=subject,
        acr=acr,
        level=level,
        amr=[str(m) for m in amr],
        auth_time=datetime.fromtimestamp(int(auth_time), UTC) if isinstance(auth_time, int | float) else None,
        attributes=verified_attributes(provider, claims),
    )


def verified_attributes(provider: OIDCProvider, claims: dict[str, Any]) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for name in ("given_name", "family_name", "name", "birthdate", "person_identifier", *LIST_ATTRIBUTES):
        value = claims.get(provider.claim(name))
        if value in (None, "", []):
            continue
        if name in LIST_ATTRIBUTES and isinstance(value, str):
            value = [value]
        attributes[name] = value
    email = claims.get(provider.claim("email"))
    if email and claims.get(provider.claim("email_verified")) is True:
        attributes["email"] = email
    return attributes


def _display_name(attributes: dict[str, Any], subject: str) -> str:
    if attributes.get("name"):
        return str(attributes["name"])[:200]
    joined = " ".join(str(attributes[k]) for k in ("given_name", "family_name") if attributes.get(k))
    return (joined or attributes.get("email") or subject)[:200]


def record_login(db: Session, asserted: AssertedLogin, *, linking_user: User | None = None) -> tuple[User, Login]:
    """Log a user in with an asserted identity, creating the user on first sight.

    With ``linking_user`` the identity is attached to that (already logged-in) user instead; an identity
    already linked to someone else is refused. Identities are matched on (provider, subject) only.
    """
    identity = db.exec(
        select(ExternalIdentity).where(
            ExternalIdentity.provider == asserted.provider.name,
            ExternalIdentity.subject == asserted.subject,
        )
    ).first()
    if linking_user is not None and identity is not None and identity.user_id != linking_user.id:
        raise Conflict(
            Message(
                N_("This %(provider)s account is already linked to another portal user."),
                provider=asserted.provider.label,
            )
        )
    try:
        user, login = _write_login(db, asserted, identity, linking_user)
        db.commit()
    except IntegrityError as exc:  # a concurrent first login of the same identity
        db.rollback()
        raise Conflict(Message(N_("This identity was linked at the same moment by another login; try again."))) from exc
    return user, login


def _write_login(
    db: Session, asserted: AssertedLogin, identity: ExternalIdentity | None, linking_user: User | None
) -> tuple[User, Login]:
    now = utcnow()
    if linking_user is not None:
        user = linking_user
    elif identity is not None:
        user = db.get(User, identity.user_id)
    else:
        user = User(
            display_name=_display_name(asserted.attributes, asserted.subject),
            email=asserted.attributes.get("email"),
        )
        db.add(user)
        db.flush()
    if not user.is_active:
        raise LoginRefused(Message(N_("This portal account is deactivated. Contact the factory's support.")))
    if identity is None:
        identity = ExternalIdentity(
            user_id=user.id, provider=asserted.provider.name, subject=asserted.subject, level=asserted.level
        )
        db.add(identity)
    identity.level = asserted.level
    identity.attributes = asserted.attributes
    identity.last_login_at = now
    if user.email is None and asserted.attributes.get("email"):
        user.email = asserted.attributes["email"]
    user.last_login_at = now
    db.flush()
    login = Login(
        user_id=user.id,
        identity_id=identity.id,
        provider=asserted.provider.name,
        subject=asserted.subject,
        acr=asserted.acr,
        level=asserted.level,
        amr=asserted.amr,
        auth_time=asserted.auth_time,
        attributes=asserted.attributes,
        logged_in_at=now,
    )
    db.add(login)
    db.flush()
    return user, login


def provision_user(db: Session, *, provider: OIDCProvider, subject: str, display_name: str, email: str | None) -> User:
    """Create a user with a known identity before their first login (imports, demo data).

    Their first login with (provider, subject) finds this user; nothing is matched on e-mail.
    """
    existing = db.exec(
        select(ExternalIdentity).where(ExternalIdentity.provider == provider.name, ExternalIdentity.subject == subject)
    ).first()
    if existing is not None:
        return db.get(User, existing.user_id)
    user = User(display_name=display_name, email=email)
    db.add(user)
    db.flush()
    db.add(
        ExternalIdentity(
            user_id=user.id,
            provider=provider.name,
            subject=subject,
            level=provider.default_acr,
        )
    )
    db.commit()
    return user


def identities_of(db: Session, user: User) -> list[ExternalIdentity]:
    return list(
        db.exec(select(ExternalIdentity).where(ExternalIdentity.user_id == user.id).order_by(ExternalIdentity.id))
    )


def unlink_identity(db: Session, actor: User, identity_id: int, *, current_login: Login | None = None) -> None:
    """Remove one of the actor's identities; the logins made with it stay in the history.

    ``current_login`` is the login behind the actor's session: its identity cannot be unlinked, or the
    session would lose its level of assurance.
    """
    identity = db.get(ExternalIdentity, identity_id)
    if identity is None or identity.user_id != actor.id:
        raise NotFound(Message(N_("No such identity.")))
    if len(identities_of(db, actor)) == 1:
        raise Conflict(Message(N_("This is your only identity; you could not log in again without it.")))
    if current_login is not None and current_login.identity_id == identity.id:
        raise Conflict(Message(N_("You are logged in with this identity; log in with another one to unlink it.")))
    for login in db.exec(select(Login).where(Login.identity_id == identity.id)):
        login.identity_id = None
    db.flush()
    db.delete(identity)
    db.commit()


# --- web sessions --------------------------------------------------------------------------------------


def start_web_session(db: Session, user: User, login: Login | None, *, lifetime: timedelta) -> str:
    """A new server-side session for ``user``; returns the random key the session cookie carries (only its
    digest is stored)."""
    key = secrets.token_urlsafe(32)
    now = utcnow()
    db.add(
        WebSession(
            key_digest=_digest(key),
            user_id=user.id,
            login_id=login.id if login else None,
            created_at=now,
            expires_at=now + lifetime,
        )
    )
    db.commit()
    return key


def live_web_session(db: Session, key: str, user_id: int) -> tuple[WebSession, User] | None:
    """The session a cookie's key names, with its user, if it belongs to ``user_id``, has not ended and has not
    run out: one statement for the two things every request of a logged-in user needs."""
    row = db.exec(
        select(WebSession, User)
        .join(User, col(User.id) == WebSession.user_id)
        .where(WebSession.key_digest == _digest(key))
    ).first()
    if row is None:
        return None
    web_session, user = row
    if web_session.user_id != user_id or not web_session.is_live(utcnow()):
        return None
    return web_session, user


def end_web_session(db: Session, key: str, *, reason: str = "logout") -> None:
    """End the session a cookie's key names (logging out); its hub tokens stop working with it."""
    row = db.exec(select(WebSession).where(WebSession.key_digest == _digest(key))).first()
    if row is not None and row.ended_at is None:
        row.ended_at = utcnow()
        row.end_reason = reason
        db.commit()


def live_sessions_of(db: Session, user: User) -> list[WebSession]:
    """The user's sessions that still count, newest first."""
    stmt = (
        select(WebSession)
        .where(WebSession.user_id == user.id, col(WebSession.ended_at).is_(None), col(WebSession.expires_at) > utcnow())
        .order_by(col(WebSession.created_at).desc())
    )
    return list(db.exec(stmt))


def end_sessions_of(db: Session, user: User, *, reason: str, commit: bool = True) -> int:
    """End every live session of ``user`` (and with them the hub tokens issued through them); how many."""
    now = utcnow()
    rows = live_sessions_of(db, user)
    for row in rows:
        row.ended_at = now
        row.end_reason = reason
    if commit:
        db.commit()
    return len(rows)


def deactivate_user(db: Session, actor: User | None, user: User, *, reason: str) -> None:
    """Deactivate ``user``: no login, no API token, and every session of theirs ends now.

    ``actor`` None means the command line."""
    if actor is not None:
        require(db, actor, Action.GRANT_ROLES)
        if actor.id == user.id:
            raise Conflict(Message(N_("You cannot deactivate yourself; ask another admin.")))
    reason = audit.require_reason(reason)
    if not user.is_active:
        return
    user.is_active = False
    end_sessions_of(db, user, reason="deactivated", commit=False)
    audit.record(
        db, actor or "cli", AuditAction.USER_DEACTIVATED, user, summary=f"{_who(user)} is deactivated", reason=reason
    )
    db.commit()


# --- factory roles -----------------------------------------------------------------------------------


def find_user_by_email(db: Session, email: str) -> User:
    users = db.exec(select(User).where(col(User.email).ilike(email.strip()))).all()
    if not users:
        raise NotFound(
            Message(N_("No user with the e-mail address %(email)s; they must log in once first."), email=email)
        )
    if len(users) > 1:
        raise Conflict(
            Message(
                N_("%(count)s users share the e-mail address %(email)s; grant the role in the portal."),
                count=len(users),
                email=email,
            )
        )
    return users[0]


def _who(user: User) -> str:
    return f"{user.display_name} <{user.email}>" if user.email else user.display_name


def grant_role(db: Session, actor: User | None, user: User, role: FactoryRole, *, reason: str) -> RoleGrant:
    """Give ``user`` a factory role; ``actor`` None means the command line (an operator with shell access)."""
    if actor is not None:
        require(db, actor, Action.GRANT_ROLES)
    reason = audit.require_reason(reason)
    existing = db.exec(select(RoleGrant).where(RoleGrant.user_id == user.id, RoleGrant.role == role)).first()
    if existing is not None:
        return existing
    grant = RoleGrant(user_id=user.id, role=role, granted_by_id=actor.id if actor else None)
    db.add(grant)
    summary = f"{_who(user)} is now {role.value}"
    audit.record(db, actor or "cli", AuditAction.ROLE_GRANTED, user, summary=summary, reason=reason)
    db.commit()
    return grant


_DOES_NOT_HOLD = {
    FactoryRole.ADMIN: N_("%(name)s does not hold the role admin."),
    FactoryRole.FINANCE: N_("%(name)s does not hold the role finance."),
    FactoryRole.SITE_OPERATOR: N_("%(name)s does not hold the role site_operator."),
    FactoryRole.REVIEWER: N_("%(name)s does not hold the role reviewer."),
}


def revoke_role(db: Session, actor: User, user: User, role: FactoryRole, *, reason: str) -> None:
    require(db, actor, Action.GRANT_ROLES)
    reason = audit.require_reason(reason)
    if user.id == actor.id and role == FactoryRole.ADMIN:
        raise Conflict(Message(N_("You cannot remove your own admin role; ask another admin.")))
    grant = db.exec(select(RoleGrant).where(RoleGrant.user_id == user.id, RoleGrant.role == role)).first()
    if grant is None:
        raise NotFound(Message(_DOES_NOT_HOLD[FactoryRole(role)], name=user.display_name))
    db.delete(grant)
    end_sessions_of(db, user, reason="role_revoked", commit=False)  # they log in again, without the role
    summary = f"{_who(user)} is no longer {role.value}"
    audit.record(db, actor, AuditAction.ROLE_REVOKED, user, summary=summary, reason=reason)
    db.commit()


def list_users(db: Session, actor: User, *, query: str = "", limit: int = PAGE_SIZE) -> list[tuple[User, set[str]]]:
    """The first ``limit`` users (by name) whose name or e-mail address holds ``query``, with their factory roles."""
    return users_page(db, actor, query=query, cursor=None, size=limit).items


#: The order of user lists: by name, the id breaking ties.
USER_ORDER = (KeyColumn(col(User.display_name), str), KeyColumn(col(User.id), int))


def users_page(
    db: Session, actor: User, *, query: str = "", cursor: str | None, size: int = PAGE_SIZE
) -> Page[tuple[User, set[str]]]:
    """One page of the users whose name or e-mail address holds ``query`` (any case), by name, each with their
    factory roles; for those who manage roles. ``InvalidCursor`` for a cursor this list did not hand out."""
    require(db, actor, Action.GRANT_ROLES)
    stmt = select(User)
    pattern = search_pattern(query)
    if pattern:
        stmt = stmt.where(
            col(User.display_name).ilike(pattern, escape="\\") | col(User.email).ilike(pattern, escape="\\")
        )
    page = keyset_page(db, stmt, USER_ORDER, lambda u: (u.display_name, u.id), cursor=cursor, size=size)
    grants = db.exec(select(RoleGrant).where(col(RoleGrant.user_id).in_([u.id for u in page.items]))).all()
    roles: dict[int, set[str]] = {}
    for g in grants:
        roles.setdefault(g.user_id, set()).add(g.role)
    return page.map(lambda users: [(u, roles.get(u.id, set())) for u in users])


# --- API tokens ----------------------------------------------------------------------------------------

TOKEN_PREFIX = "bafp_"  # noqa: S105  (a public prefix, not a secret)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_api_token(
    db: Session, actor: User, *, name: str, scopes: list[str], ttl_days: int, login: Login | None = None
) -> tuple[ApiToken, str]:
    """Create a token for ``actor``; the plain token is returned once and never stored. ``login``: the login of the
    session that makes it (the account page's), whose level of assurance and affiliations the token then acts
    with (``ApiToken.login``); None for a token that may take no step asking for a level."""
    name = name.strip()
    errors: dict[str, Message] = {}
    if not name:
        errors["name"] = Message(N_("Give the token a name, so you recognise it later."))
    # usage:write tokens are made for sites
    valid_scopes = {s.value for s in ApiScope if s != ApiScope.USAGE_WRITE}
    if not scopes or not set(scopes) <= valid_scopes:
        errors["scopes"] = Message(N_("Choose scopes among: %(scopes)s."), scopes=", ".join(sorted(valid_scopes)))
    else:
        refused = _scopes_beyond_roles(db, actor, scopes)
        if refused:
            errors["scopes"] = Message(
                N_("Only factory staff with the right role may have these scopes: %(scopes)s."),
                scopes=", ".join(refused),
            )
    if not 1 <= ttl_days <= 366:
        errors["ttl_days"] = Message(N_("A token lives between 1 and 366 days."))
    if errors:
        raise InvalidInput(Message(N_("The token could not be created.")), errors=errors)
    plain = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        user_id=actor.id,
        name=name[:100],
        prefix=plain[: len(TOKEN_PREFIX) + 6],
        digest=_digest(plain),
        scopes=sorted(set(scopes)),
        expires_at=utcnow() + timedelta(days=ttl_days),
    )
    if login is not None:
        token.login_provider = login.provider
        token.login_level = AssuranceLevel(login.level)
        token.login_affiliations = [str(a) for a in login.attributes.get("external_affiliation") or []]
    db.add(token)
    db.commit()
    return token, plain


def _scopes_beyond_roles(db: Session, user: User, scopes: list[str]) -> list[str]:
    """The privileged scopes among ``scopes`` that none of the user's factory roles allows (``PRIVILEGED_SCOPES``)."""
    privileged = {ApiScope(s) for s in scopes if s in PRIVILEGED_SCOPES}
    if not privileged:
        return []
    roles = factory_roles(db, user)
    return sorted(scope.value for scope in privileged if not PRIVILEGED_SCOPES[scope] & roles)


def api_tokens_of(db: Session, actor: User) -> list[ApiToken]:
    return list(db.exec(select(ApiToken).where(ApiToken.user_id == actor.id).order_by(col(ApiToken.created_at).desc())))


def revoke_api_token(db: Session, actor: User, token_id: int) -> ApiToken:
    token = db.get(ApiToken, token_id)
    if token is None or token.user_id != actor.id:
        raise NotFound(Message(N_("No such token.")))
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        db.commit()
    return token


def authenticate_api_token(db: Session, plain: str, *, scope: ApiScope) -> tuple[User, ApiToken]:
    """The user behind a bearer token that is unrevoked, unexpired and has ``scope``, and the token."""
    token = db.exec(select(ApiToken).where(ApiToken.digest == _digest(plain))).first()
    now = utcnow()
    if token is None or token.revoked_at is not None or token.expires_at <= now:
        raise AuthenticationRequired(Message(N_("The API token is unknown, revoked or expired.")))
    user = db.get(User, token.user_id)
    if user is None or not user.is_active:
        raise AuthenticationRequired(Message(N_("The API token's owner is deactivated.")))
    if scope.value not in token.scopes:
        raise NotAuthorised(Message(N_("This token lacks the '%(scope)s' scope."), scope=scope.value))
    if _scopes_beyond_roles(db, user, [scope.value]):
        raise NotAuthorised(
            Message(
                N_("The '%(scope)s' scope needs a factory role that the token's owner no longer holds."),
                scope=scope.value,
            )
        )
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        token.last_used_at = now
        db.commit()
    return user, token


def create_agent_token(
    db: Session, actor: User | None, *, owner: User, site_id: int, name: str, reason: str, ttl_days: int = 365
) -> tuple[ApiToken, str]:
    """A ``usage:write`` token for a site's usage agent; it can report usage for that site only.

    ``actor`` None means the command line; ``owner`` is the staff member answerable for the agent.
    """
    if actor is not None:
        require(db, actor, Action.MANAGE_CAPACITY)
    reason = audit.require_reason(reason)
    if not name.strip():
        raise InvalidInput(
            Message(N_("Name the agent, for example 'waw-slurm-agent'.")), errors={"name": Message(N_("Required."))}
        )
    if not 1 <= ttl_days <= 3 * 366:
        raise InvalidInput(
            Message(N_("An agent token lives between 1 day and 3 years.")),
            errors={"ttl_days": Message(N_("Out of range."))},
        )
    plain = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        user_id=owner.id,
        name=name.strip()[:100],
        prefix=plain[: len(TOKEN_PREFIX) + 6],
        digest=_digest(plain),
        scopes=[ApiScope.USAGE_WRITE.value],
        site_id=site_id,
        expires_at=utcnow() + timedelta(days=ttl_days),
    )
    db.add(token)
    summary = f"usage agent token '{token.name}' for site {site_id}, answerable: {_who(owner)}"
    audit.record(db, actor or "cli", AuditAction.AGENT_TOKEN_CREATED, token, summary=summary, reason=reason)
    db.commit()
    return token, plain
