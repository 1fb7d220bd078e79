"""Alembic, configured in code: ``portal db upgrade`` and the tests call these functions."""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

HERE = Path(__file__).resolve().parent


def alembic_config(database_url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    if database_url:
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


@functools.cache  # the scripts do not change while the process runs; /healthz asks often
def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def current_revision(database_url: str) -> str | None:
    """The database's revision (None: no schema yet)."""
    import sqlalchemy as sa
    from alembic.runtime.migration import MigrationContext

    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def resolve_revision(revision: str) -> str | None:
    """REVISION's full id ("head", a unique prefix such as "0015"); None for "base" (no schema). Raises alembic's
    ``CommandError`` when it is unknown or ambiguous."""
    found = ScriptDirectory.from_config(alembic_config()).get_revision(revision)
    return found.revision if found is not None else None


def migrations_between(newer: str | None, older: str | None) -> list[tuple[str, str]]:
    """(revision, description) of the migrations above OLDER up to NEWER, newest first: what a downgrade from
    NEWER to OLDER undoes, or an upgrade from OLDER to NEWER applies. Empty when OLDER is not below NEWER."""
    if newer is None or newer == older:
        return []
    script = ScriptDirectory.from_config(alembic_config())
    steps = list(script.iterate_revisions(newer, "base"))
    ids = [step.revision for step in steps]
    if older is not None and older not in ids:
        return []
    below = ids.index(older) if older is not None else len(ids)
    return [(step.revision, (step.doc or "").strip()) for step in steps[:below]]
