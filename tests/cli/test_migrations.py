"""Schema changes go only through Alembic: the migrations must build exactly the models' schema."""

from __future__ import annotations

import warnings

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

import portal.models  # noqa: F401
from portal.migrations import alembic_config, head_revision, upgrade


def schema_differences(url: str) -> list:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection, warnings.catch_warnings():
            if engine.dialect.name == "sqlite":
                # SQLAlchemy cannot reflect SQLite's expression indexes, so Alembic leaves them out of the
                # comparison (and both say so); expression_indexes_on_sqlite checks them. PostgreSQL compares them.
                warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index")
                warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expression-based")
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, SQLModel.metadata)
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def expression_indexes_on_sqlite(url: str) -> dict[str, str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'index'")).all()
    finally:
        engine.dispose()
    return {name: sql for name, sql in rows if sql and "(" in sql.split(" ON ", 1)[1].split("(", 1)[1]}


def test_migrations_build_the_models_schema_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    upgrade(url)
    assert current_revision(url) == head_revision()
    assert schema_differences(url) == []
    created = expression_indexes_on_sqlite(url)
    declared = {
        index.name
        for table in SQLModel.metadata.tables.values()
        for index in table.indexes
        if any(isinstance(e, sa.TextClause) for e in index.expressions)
    }
    assert declared == set(created), (declared, created)
    assert "(archived_at IS NOT NULL), title, id" in created["ix_projects_dashboard_order"]


def test_migrations_go_down_and_up_again_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'roundtrip.db'}"
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    assert current_revision(url) is None
    upgrade(url)
    assert schema_differences(url) == []


@pytest.mark.postgres
def test_migrations_build_the_models_schema_on_postgresql(postgres_url):
    upgrade(postgres_url)
    assert current_revision(postgres_url) == head_revision()
    assert schema_differences(postgres_url) == []
    engine = sa.create_engine(postgres_url)
    with engine.connect() as connection:
        column_type = connection.execute(
            sa.text(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_name = 'users' AND column_name = 'created_at'"
            )
        ).scalar_one()
    engine.dispose()
    assert column_type == "timestamp with time zone"
