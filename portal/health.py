"""``GET /healthz``: up or down, for load balancers and the compose health check; the database's details (dialect,
schema revision, the error's kind) only for operators who send ``Authorization: Bearer <PORTAL_METRICS_TOKEN>``."""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from portal.db import get_engine
from portal.observability import token_accepted
from portal.web import settings

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    from alembic.runtime.migration import MigrationContext  # alembic costs ~0.2 s to import: not at every start

    from portal.migrations import head_revision

    engine = get_engine()
    database: dict[str, object] = {"dialect": engine.dialect.name}
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
        head = head_revision()
        database.update(ok=True, revision=current, head=head, migrated=current == head)
    except SQLAlchemyError as exc:
        database.update(ok=False, error=type(exc).__name__)
    healthy = bool(database.get("ok") and database.get("migrated"))
    status = 200 if healthy else 503
    body: dict[str, object] = {"status": "ok" if healthy else "degraded"}
    if token_accepted(request.headers.get("Authorization", ""), settings().metrics_token):
        body["database"] = database
    response = jsonify(body)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    if not healthy:
        response.headers["Retry-After"] = "30"
    return response
