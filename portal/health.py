"""``GET /healthz``: liveness and the database's state, for load balancers and ``portal check``."""

from __future__ import annotations

from alembic.runtime.migration import MigrationContext
from flask import Blueprint, jsonify
from sqlalchemy.exc import SQLAlchemyError

from portal.db import get_engine
from portal.migrations import head_revision

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():  # type: ignore[no-untyped-def]
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
    return jsonify(status="ok" if healthy else "degraded", database=database), 200 if healthy else 503
