"""Every ``portal`` command starts fast: its help (and its start, up to the moment it needs the application) loads
neither the application nor the database, PDF or Stripe libraries.

Measured without a wall-clock deadline, which a loaded CI machine misses: (1) the modules each command's
``--help`` imports, counted in a fresh interpreter (deterministic); (2) the CPU time (not wall time) of
``portal --help``, the least of three runs, against the CPU time of a bare ``import flask.cli`` measured in the
same test, so a slow or busy machine scales both alike.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import click
import pytest

from portal.cli import LAZY_COMMANDS, main

REPO = Path(__file__).resolve().parents[2]
PORTAL = str(Path(sys.executable).parent / "portal")

#: What no command's start may import: the application's packages beyond the CLI, the ORM and the database
#: drivers, Alembic, the PDF, payment and OIDC libraries.
HEAVY = (
    "sqlalchemy", "sqlmodel", "alembic", "psycopg", "fpdf", "stripe", "authlib", "joserfc", "flask_login",
    "flask_wtf", "flask_babel", "spectree", "prometheus_client", "requests", "portal.db", "portal.models",
    "portal.identity.models", "portal.identity.services", "portal.ledger.models", "portal.ledger.services",
    "portal.market.services", "portal.metering.services", "portal.reports.rollups", "portal.grants.catalogue",
    "portal.worker",
)  # fmt: skip

COMMANDS = [
    [],
    ["db"],
    ["db", "upgrade"],
    ["db", "downgrade"],
    ["serve"],
    ["worker"],
    ["check"],
    ["demo"],
    ["users", "grant-role"],
    ["users", "erase"],
    ["usage", "import-sacct"],
    ["usage", "pull-sacct"],
    ["slurm", "sync"],
    ["slurm", "map"],
    ["sites", "list"],
    ["sites", "agent-token"],
    ["calls", "seed"],
    ["reports", "check"],
    ["reports", "assign-site"],
]

MODULES_AFTER = """
import json, sys
from portal.cli import main
try:
    main(sys.argv[1:], prog_name="portal")
except SystemExit as exit:
    assert exit.code == 0, exit.code
print(json.dumps(sorted(sys.modules)))
"""


def imported_modules(*code_and_args: str) -> list[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PORTAL_")}
    result = subprocess.run(
        [sys.executable, "-c", *code_and_args], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    return json.loads(result.stdout.splitlines()[-1])


def test_no_commands_help_loads_the_application_or_the_heavy_libraries() -> None:
    floor = len(imported_modules("import json, sys, portal; print(json.dumps(sorted(sys.modules)))"))
    for command in COMMANDS:
        modules = imported_modules(MODULES_AFTER, *command, "--help")
        heavy = sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))
        assert heavy == [], f"`portal {' '.join(command)} --help` imports {len(heavy)} heavy modules: {heavy[:10]}"
        # `import portal` (Flask and the settings) is the floor; before the lazy CLI, `portal --help` imported
        # about 2,000 modules more.
        assert len(modules) <= floor + 60, f"`portal {' '.join(command)} --help`: {len(modules)} modules, {floor=}"


def cpu_seconds(argv: list[str]) -> float:
    """CPU time (user + system) of a child process: the least of three runs."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PORTAL_")}
    times = []
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(argv, capture_output=True, env=env, timeout=120, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        times.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return min(times)


def test_portal_help_costs_a_small_multiple_of_starting_flasks_cli() -> None:
    floor = cpu_seconds([sys.executable, "-c", "import flask.cli"])
    help_cost = cpu_seconds([PORTAL, "--help"])
    # Here: floor 0.2 s, `portal --help` 0.45 s (it was 2.9 s, 14x the floor, before the lazy CLI).
    assert help_cost <= 4 * floor, f"`portal --help` took {help_cost:.2f} s of CPU, bare flask.cli {floor:.2f} s"


def test_the_help_lists_every_command_with_the_summary_of_the_command_itself() -> None:
    listing = subprocess.run([PORTAL, "--help"], capture_output=True, text=True, timeout=60, check=True).stdout
    for name, (target, summary) in LAZY_COMMANDS.items():
        assert f"  {name} " in listing and summary in listing, name
        command = main.get_command(click.Context(main), name)
        assert command is not None, target
        assert command.get_short_help_str(200) == summary, f"LAZY_COMMANDS[{name!r}] differs from {target}'s help"
    for name in ("db", "serve", "worker", "users", "check", "demo", "limiter", "routes"):
        assert f"  {name} " in listing, name


@pytest.mark.parametrize("command", [["usage", "import-sacct"], ["limiter"], ["sites", "list"]])
def test_lazily_imported_commands_still_run(command: list[str]) -> None:
    result = subprocess.run([PORTAL, *command, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: portal {' '.join(command)}")
