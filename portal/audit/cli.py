"""The ``--reason`` option of every command that takes a privileged action: the audit log keeps it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

F = TypeVar("F", bound=Callable[..., object])


def reason_option(command: F) -> F:
    """A required ``--reason``; click exits non-zero with a message on stderr when it is missing."""
    return click.option("--reason", required=True, help="Why (3 to 500 characters); kept in the audit log.")(command)
