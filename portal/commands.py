"""What every ``portal`` command shares: the services' refusals as the command's message.

A leaf: it imports only click, so any package's ``cli.py`` can use it without reaching the rest of the portal."""

from __future__ import annotations

from typing import Any

import click


def refusal(exc: Any) -> click.ClickException:
    """A refusal of the services (``portal.errors.DomainError``) as a command's message, exit status 1: what was
    refused, then each field's own message under the option it came from (``--reason: ...``)."""
    lines = [str(exc.detail)]
    for field, message in exc.errors.items():
        if str(message) != str(exc.detail):
            lines.append(f"  --{str(field).replace('_', '-')}: {message}")
    return click.ClickException("\n".join(lines))
