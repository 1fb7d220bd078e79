"""``/api/v1/admin/users``: users' factory roles over the API, as on the users page and with ``portal users``.

Every route needs a token with the ``admin`` scope, which only factory admins may hold
(``identity.models.PRIVILEGED_SCOPES``); a grant or a revocation asks the same service as the page, which
checks the role again, requires the reason and writes the audit record in the same transaction.
"""

from __future__ import annotations

from flask import jsonify, request, url_for
from pydantic import BaseModel, Field
from spectree import Response

from portal.api.core import Problem, api_user, bp, spec, token_required
from portal.audit.services import REASON_LENGTH
from portal.authz import Action, factory_roles, require
from portal.db import find, get_db
from portal.errors import NotFound
from portal.identity.models import ApiScope, FactoryRole, User
from portal.identity.services import grant_role, revoke_role, users_page
from portal.messages import N_, Message
from portal.pagination import MAX_PAGE_SIZE, MAX_SEARCH, PAGE_SIZE

#: The OpenAPI security requirement of every route here: the bearer token with the ``admin`` scope.
ADMIN = [{"bearerAuth": [ApiScope.ADMIN.value]}]


class UserRolesOut(BaseModel):
    id: int
    display_name: str
    email: str | None
    is_active: bool
    factory_roles: list[FactoryRole] = Field(description="Sorted")


class UserListQuery(BaseModel):
    q: str = Field(default="", max_length=MAX_SEARCH, description="Text in the name or e-mail address (any case)")
    cursor: str | None = Field(default=None, max_length=2000, description="`next_cursor` of the previous page")
    size: int = Field(default=PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE, description="Users per page")


class UserListOut(BaseModel):
    users: list[UserRolesOut] = Field(description="By name, those that match `q`")
    next_cursor: str | None = Field(description="Pass as `cursor` for the following page; null on the last")
    next: str | None = Field(description="The URL of the following page; null on the last")


class RoleChangeIn(BaseModel):
    role: FactoryRole
    reason: str = Field(
        min_length=REASON_LENGTH[0], max_length=REASON_LENGTH[1], description="Why: kept in the audit log"
    )


def _out(user: User, roles: set[str] | set[FactoryRole]) -> UserRolesOut:
    return UserRolesOut(
        id=user.id,
        display_name=user.display_name,
        email=user.email,
        is_active=user.is_active,
        factory_roles=sorted(FactoryRole(r) for r in roles),
    )


def _user(user_id: int) -> User:
    """The user, once the caller may manage roles at all (who exists is no business of anyone else)."""
    db = get_db()
    require(db, api_user(), Action.GRANT_ROLES)
    user = find(db, User, user_id)
    if user is None:
        raise NotFound(Message(N_("No such user.")))
    return user


@bp.get("/admin/users")
@token_required(ApiScope.ADMIN)
@spec.validate(
    query=UserListQuery,
    resp=Response(HTTP_200=UserListOut, HTTP_400=Problem, HTTP_401=Problem, HTTP_403=Problem, HTTP_422=Problem),
    tags=["operators"],
    operation_id="list_user_roles",
    security=ADMIN,
)
def list_user_roles():
    """Users and their factory roles, one page at a time (a cursor that was not handed out: 400).

    Scope: `admin` (factory admins)."""
    query: UserListQuery = request.context.query
    page = users_page(get_db(), api_user(), query=query.q, cursor=query.cursor, size=query.size)
    following = None
    if page.next_cursor:
        args = {"cursor": page.next_cursor, "size": query.size} | ({"q": query.q} if query.q else {})
        following = url_for(request.endpoint or "", **args)
    body = UserListOut(users=[_out(u, roles) for u, roles in page.items], next_cursor=page.next_cursor, next=following)
    return jsonify(body.model_dump(mode="json"))


@bp.post("/admin/users/<int:user_id>/role-grants")
@token_required(ApiScope.ADMIN)
@spec.validate(
    json=RoleChangeIn,
    resp=Response(HTTP_201=UserRolesOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_404=Problem, HTTP_422=Problem),
    tags=["operators"],
    operation_id="grant_user_role",
    security=ADMIN,
)
def grant_user_role(user_id: int):
    """Give a user a factory role; granting a role they hold changes nothing. Audited with the reason.

    Scope: `admin` (factory admins)."""
    db, body = get_db(), request.context.json
    user = _user(user_id)
    grant_role(db, api_user(), user, body.role, reason=body.reason)
    return jsonify(_out(user, factory_roles(db, user)).model_dump(mode="json")), 201


@bp.post("/admin/users/<int:user_id>/role-revocations")
@token_required(ApiScope.ADMIN)
@spec.validate(
    json=RoleChangeIn,
    resp=Response(
        HTTP_200=UserRolesOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_404=Problem, HTTP_409=Problem, HTTP_422=Problem
    ),
    tags=["operators"],
    operation_id="revoke_user_role",
    security=ADMIN,
)
def revoke_user_role(user_id: int):
    """Take a factory role from a user (404 when they do not hold it; 409 for your own admin role); their
    sessions end. Audited with the reason.

    Scope: `admin` (factory admins)."""
    db, body = get_db(), request.context.json
    user = _user(user_id)
    revoke_role(db, api_user(), user, body.role, reason=body.reason)
    return jsonify(_out(user, factory_roles(db, user)).model_dump(mode="json"))
