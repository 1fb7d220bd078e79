"""The one database session helper, and the column types every package shares."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from typing import TypeVar

import sqlalchemy as sa
from flask import Flask, current_app, g
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel

#: The largest id a table's key holds (PostgreSQL's ``integer``): a larger one names nothing, and must not
#: reach a query, where it overflows the column's type.
LARGEST_ID = 2**31 - 1


_Row = TypeVar("_Row", bound=SQLModel)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database (SQLite keeps no zone, so it is added back)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where a timezone-aware UTC one is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class StrEnumType(sa.types.TypeDecorator[StrEnum]):
    """A string column that hands back members of a ``StrEnum`` (plain strings on every database)."""

    impl = sa.String
    cache_ok = True

    def __init__(self, enum_class: type[StrEnum], length: int = 32) -> None:
        super().__init__(length)
        self.enum_class = enum_class

    def process_bind_param(self, value: str | None, dialect: sa.Dialect) -> str | None:
        return None if value is None else self.enum_class(value).value

    def process_result_value(self, value: str | None, dialect: sa.Dialect) -> StrEnum | None:
        return None if value is None else self.enum_class(value)


NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
SQLModel.metadata.naming_convention = NAMING_CONVENTION


def make_engine(url: str, *, connect_timeout: int = 5, statement_timeout: int = 0) -> Engine:
    """The engine for ``url``. On PostgreSQL, connecting (and waiting for a pooled connection) gives up after
    ``connect_timeout`` seconds and the server cancels a statement after ``statement_timeout`` seconds (0: never),
    so that a database that is down or hung raises ``OperationalError`` (the web answers 503) instead of
    holding the request; TCP keepalives find a peer that vanished from the network."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    connect_args: dict[str, object] = {
        "connect_timeout": connect_timeout,
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    if statement_timeout:
        connect_args["options"] = f"-c statement_timeout={statement_timeout * 1000}"
        connect_args["tcp_user_timeout"] = (statement_timeout + connect_timeout) * 1000
    return sa.create_engine(url, pool_pre_ping=True, pool_timeout=connect_timeout, connect_args=connect_args)


def init_app(app: Flask, engine: Engine) -> None:
    app.extensions["portal.engine"] = engine
    app.teardown_appcontext(_close_session)


def get_engine() -> Engine:
    return current_app.extensions["portal.engine"]


def find(db: Session, model: type[_Row], row_id: int) -> _Row | None:
    """``db.get`` for an id that came from outside (a form, a JSON body): one that no row can have finds
    nothing, instead of overflowing the query."""
    return db.get(model, row_id) if 1 <= row_id <= LARGEST_ID else None


def add_to_sums(db: Session, table: sa.Table, key: tuple[str, ...], sums: tuple[str, ...], rows: list[dict]) -> None:
    """Add ``rows`` to the running totals ``sums`` of ``table``, keyed by ``key``, in one batched upsert
    (``INSERT ... ON CONFLICT DO UPDATE SET x = x + excluded.x``): atomic on SQLite and PostgreSQL, so
    concurrent writers never lose an update. Pass rows in key order so that concurrent batches lock alike."""
    if not rows:
        return
    insert = postgresql_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=list(key), set_={name: table.c[name] + statement.excluded[name] for name in sums}
    )
    db.execute(statement, rows)


def get_db() -> Session:
    """The request's session; services receive it as an argument and commit their own unit of work."""
    if "db" not in g:
        g.db = Session(get_engine(), expire_on_commit=False)
    return g.db


def _close_session(_exc: BaseException | None) -> None:
    db = g.pop("db", None)
    if db is not None:
        db.close()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session outside a request (CLI, worker); rolled back on error, always closed."""
    with Session(engine, expire_on_commit=False) as db:
        try:
            yield db
        except BaseException:
            db.rollback()
            raise
