"""``portal demo``, registered with the ``portal`` command through the ``portal.cli_plugins`` entry point.

The ``portal`` command imports this module to list or run its commands, so it imports click only; the demo's
code is imported when the command runs.
"""

from __future__ import annotations

import click


@click.command()
@click.option("--port", default=5000, show_default=True)
@click.option("--provider-port", default=9400, show_default=True, help="First port of the local OIDC providers.")
def demo(port: int, provider_port: int) -> None:
    """Run the whole portal locally: OIDC providers, migrated SQLite, demo data. Ctrl-C stops it all."""
    from portal_standin.demo import run_demo

    run_demo(port=port, provider_port=provider_port)
