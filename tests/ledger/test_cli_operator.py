"""An operator sets up one cluster with the ``portal`` command (site, resource, capacity, two allocations, their
Slurm accounts) and imports its sacct output: each set-up command needs a reason and is audited; the import says
what it charged per allocation, as a table or JSON, and its exit status tells "some lines refused, the rest
charged" (3) from failure (1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flask import Flask
from sqlmodel import Session, func, select

from portal.audit.models import AuditAction, AuditEvent
from portal.ledger.models import Allocation, CapacityPeriod, LedgerEntry, Resource, Site
from portal.projects import services as projects
from tests.conftest import portal_cli, portal_cli_in_process
from tests.ledger_world import HOUR, person

REASON = ("--reason", "Setting up the Warsaw cluster")


@pytest.fixture
def settings(make_settings):
    return make_settings(slurm_clusters=[{"name": "factory", "site": "waw"}])


def ok(app: Flask, *args: str, run=portal_cli_in_process) -> str:
    """The command's output; it must succeed. In the test process unless ``run=portal_cli`` asks for the real one."""
    result = run(app, *args)
    assert result.returncode == 0, f"portal {' '.join(args)}: {result.returncode}\n{result.stdout}{result.stderr}"
    return result.stdout


def a_project(db: Session, title: str) -> int:
    pi = person(db, "Pi")
    org = projects.create_organisation(db, pi, name=f"{title} Uni", kind="university", country="PL")
    return projects.create_project(db, pi, org, title=title).id


def sacct_line(job: int, account: str, gpus: int, seconds: int, cluster: str = "factory") -> str:
    return (
        f"{job}|{job}|{cluster}|{account}|anna|gpu|cpu={8 * gpus},gres/gpu={gpus}|{seconds}|"
        f"2030-02-01T08:00:00|2030-02-01T09:00:00|COMPLETED\n"
    )


def set_up_cluster(app: Flask, db: Session, run=portal_cli_in_process) -> tuple[int, int]:
    """waw with h200 planned for 2030-Q1 and two allocations mapped to Slurm accounts; their ids."""

    def step(*args: str) -> str:
        return ok(app, *args, run=run)

    step("sites", "add", "waw", "--name", "Warsaw AI Factory", "--city", "Warsaw", "--country", "PL", *REASON)
    step("resources", "add", "waw:h200", "--name", "H200 GPU-hours", "--kind", "gpu", "--gpu-model", "H200", *REASON)
    step("capacity", "set", "waw:h200", "--quarter", "2030-02-15", "--capacity", "1000", *REASON)
    ids = []
    for title, hours in (("Shipyard vision", "100"), ("Baltic speech", "50")):
        project = a_project(db, title)
        out = step(
            *("allocations", "open", "--project", str(project), "--resource", "waw:h200", "--amount", hours),
            *("--from", "2030-01-01", "--to", "2030-04-01", "--title", "Pilot", *REASON),
        )
        assert out.startswith("allocation ") and f"{hours}.0 GPU-hours of H200 GPU-hours for project {project}" in out
        ids.append(int(out.split()[1]))
    for allocation, account in zip(ids, ("ship-gpu", "speech-gpu"), strict=True):
        step("slurm", "map", "--cluster", "factory", "--account", account, "--allocation", str(allocation), *REASON)
    return ids[0], ids[1]


def test_an_operator_sets_up_a_cluster_and_imports_its_usage(app, db, tmp_path: Path):
    ship, speech = set_up_cluster(app, db)  # in the test process; the imports below are the real command
    db.expire_all()
    period = db.exec(select(CapacityPeriod)).one()
    assert (str(period.starts_on), str(period.ends_on), period.capacity, period.reserved) == (
        "2030-01-01",
        "2030-04-01",
        1000 * HOUR,
        150 * HOUR,
    )
    for action in (
        AuditAction.SITE_CREATED,
        AuditAction.RESOURCE_CREATED,
        AuditAction.CAPACITY_CHANGED,
        AuditAction.ALLOCATION_OPENED,
        AuditAction.SLURM_ACCOUNT_MAPPED,
    ):
        events = db.exec(select(AuditEvent).where(AuditEvent.action == action)).all()
        assert events and {e.reason for e in events} == {REASON[1]}, action
    opened = db.exec(select(AuditEvent).where(AuditEvent.action == AuditAction.ALLOCATION_OPENED)).all()
    assert sorted(e.object_id for e in opened) == [ship, speech] and {e.actor_label for e in opened} == {"cli"}

    dump = tmp_path / "sacct.txt"
    dump.write_text(
        sacct_line(7001, "ship-gpu", 2, 3600)
        + sacct_line(7002, "ship-gpu", 1, 1800)
        + sacct_line(7003, "speech-gpu", 4, 900)
        + "7004|7004|factory|ship-gpu|anna|gpu|cpu=8,gres/gpu=1|ten|x|y|COMPLETED\n"
        + sacct_line(7005, "ship-gpu", 1, 60, cluster="elsewhere")
    )
    first = portal_cli(app, "usage", "import-sacct", str(dump), "--cluster", "factory")
    assert first.returncode == 3, first.stdout + first.stderr
    assert "5 lines read: 3 jobs charged, 0 already charged before" in first.stdout
    table = [line.split() for line in first.stdout.splitlines() if line.split()[:1] in ([str(ship)], [str(speech)])]
    assert [(row[0], row[2], row[3]) for row in table] == [
        (str(ship), "waw:h200", "2.5"),
        (str(speech), "waw:h200", "1.0"),
    ]
    assert "line 4:" in first.stderr and "line 5: belongs to cluster 'elsewhere'" in first.stderr
    assert "2 lines refused (listed above); the rest are charged" in first.stderr

    again = portal_cli(app, "usage", "import-sacct", str(dump), "--cluster", "factory", "--json")
    assert again.returncode == 3
    document = json.loads(again.stdout)
    assert (document["charged_jobs"], document["already_charged_jobs"], document["allocations"]) == (0, 3, [])
    assert [r["line"] for r in document["refused"]] == [4, 5] and document["exit_status"] == 3

    db.expire_all()
    assert db.get(Allocation, ship).used == 2 * 3600 + 1800 and db.get(Allocation, speech).used == 4 * 900


def test_the_import_exit_status_tells_all_charged_some_refused_and_failure(app, db, tmp_path: Path):
    ship, _speech = set_up_cluster(app, db)
    clean = tmp_path / "clean.txt"
    clean.write_text(sacct_line(8001, "ship-gpu", 1, 3600))
    done = portal_cli_in_process(app, "usage", "import-sacct", str(clean), "--cluster", "factory", "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["allocations"] == [
        {
            "allocation_id": ship,
            "project_id": document["allocations"][0]["project_id"],
            "resource": "waw:h200",
            "kind": "gpu",
            "base_unit": "GPU-second",
            "charged": 3600,
            "balance": 99 * HOUR,
        }
    ]
    assert document["refused"] == [] and document["exit_status"] == 0

    broken = tmp_path / "broken.txt"
    broken.write_text("not|a|sacct|line\n\n|||\n")
    failed = portal_cli_in_process(app, "usage", "import-sacct", str(broken), "--cluster", "factory")
    assert failed.returncode == 1 and "none of the 2 lines could be read" in failed.stderr

    mixed = tmp_path / "mixed.txt"
    mixed.write_text(sacct_line(8002, "ship-gpu", 1, 60) + "garbage\n")
    assert portal_cli_in_process(app, "usage", "import-sacct", str(mixed), "--cluster", "factory").returncode == 3

    missing = portal_cli_in_process(app, "usage", "import-sacct", str(tmp_path / "nothing.txt"), "--cluster", "factory")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    help_text = portal_cli_in_process(app, "usage", "import-sacct", "--help").stdout
    assert "3  some lines were refused, the rest charged" in help_text


def counts(db: Session) -> tuple[int, ...]:
    db.expire_all()
    return tuple(
        db.exec(select(func.count()).select_from(table)).one()
        for table in (AuditEvent, Site, Resource, CapacityPeriod, Allocation, LedgerEntry)
    )


def test_the_set_up_commands_refuse_bad_input_with_a_message_and_change_nothing(app, db):
    ok(app, "sites", "add", "waw", "--name", "Warsaw AI Factory", "--city", "Warsaw", "--country", "PL", *REASON)
    ok(app, "resources", "add", "waw:h200", "--name", "H200 GPU-hours", "--kind", "gpu", "--gpu-model", "H200", *REASON)
    ok(app, "capacity", "set", "waw:h200", "--quarter", "2030-01-01", "--capacity", "10", *REASON)
    project = str(a_project(db, "Vision"))
    site = ("--name", "Vilnius", "--city", "Vilnius", "--country", "LT")
    period = ("--from", "2030-01-01", "--to", "2030-04-01")
    commands: list[tuple[str, ...]] = [
        ("sites", "add", "vno", *site),  # no reason
        ("sites", "add", "vno", *site, "--reason", "  "),
        ("sites", "add", "waw", *site, *REASON),  # the code is taken
        ("sites", "add", "v n o", *site, *REASON),
        ("sites", "add", "vno", "--name", "Vilnius", "--city", "Vilnius", "--country", "Lithuania", *REASON),
        ("sites", "update", "waw", "--name", "Warsaw Factory"),  # no reason
        ("sites", "update", "waw", *REASON),  # nothing to change
        ("sites", "update", "nowhere", "--name", "Nowhere", *REASON),
        ("sites", "update", "waw", "--country", "Poland", *REASON),
        ("sites", "update", "waw", "--name", "  ", *REASON),
        ("resources", "add", "waw:h100", "--name", "H100", "--kind", "gpu", *REASON),  # no GPU model
        ("resources", "add", "waw:h100", "--name", "H100", "--kind", "quantum", *REASON),
        ("resources", "add", "nowhere:h100", "--name", "H100", "--kind", "cpu", *REASON),
        ("resources", "add", "waw", "--name", "H100", "--kind", "cpu", *REASON),
        ("resources", "add", "waw:h200", "--name", "again", "--kind", "cpu", *REASON),  # taken
        ("resources", "add", "waw:cpu", "--name", "CPU", "--kind", "cpu", "--overbooking", "0.5", *REASON),
        ("resources", "add", "waw:cpu", "--name", "CPU", "--kind", "cpu", "--overbooking", "lots", *REASON),
        ("capacity", "set", "waw:h200", "--quarter", "2030-04-01", *REASON),  # neither --capacity nor --units
        ("capacity", "set", "waw:h200", "--quarter", "2030-04-01", "--capacity", "5", "--units", "8", *REASON),
        ("capacity", "set", "waw:h200", "--quarter", "2030-13-01", "--capacity", "5", *REASON),
        ("capacity", "set", "waw:h200", "--quarter", "1900-01-01", "--capacity", "5", *REASON),
        ("capacity", "set", "waw:h200", "--quarter", "2030-04-01", "--capacity", "-5", *REASON),
        ("capacity", "set", "waw:h200", "--quarter", "2030-04-01", "--capacity", "many", *REASON),
        ("capacity", "set", "waw:gpu", "--quarter", "2030-04-01", "--capacity", "5", *REASON),
        ("capacity", "set", "waw:h200", "--quarter", "2030-04-01", "--capacity", "5", "--reason", ""),
        ("allocations", "open", "--project", project, "--resource", "waw:h200", "--amount", "5", *period),  # no reason
        ("allocations", "open", "--project", "424242", "--resource", "waw:h200", "--amount", "5", *period, *REASON),
        ("allocations", "open", "--project", "x", "--resource", "waw:h200", "--amount", "5", *period, *REASON),
        ("allocations", "open", "--project", project, "--resource", "waw:x", "--amount", "5", *period, *REASON),
        ("allocations", "open", "--project", project, "--resource", "waw:h200", "--amount", "0", *period, *REASON),
        ("allocations", "open", "--project", project, "--resource", "waw:h200", "--amount", "1e9", *period, *REASON),
        ("allocations", "open", "--project", project, "--resource", "waw:h200", "--amount", "11", *period, *REASON),
        (
            "allocations",
            "open",
            *("--project", project, "--resource", "waw:h200", "--amount", "5"),
            *("--from", "2030-04-01", "--to", "2030-01-01", *REASON),
        ),
        (
            "allocations",
            "open",
            *("--project", project, "--resource", "waw:h200", "--amount", "5"),
            *("--from", "2030-01-01", "--to", "2030-04-01", "--reason", "no"),
        ),
    ]
    before = counts(db)
    results = [portal_cli_in_process(app, *args) for args in commands]
    failures = []
    for args, result in zip(commands, results, strict=True):
        if result.returncode == 0 or not result.stderr.strip() or "Traceback" in result.stderr:
            failures.append(f"portal {' '.join(args)}: exit {result.returncode}\n{result.stderr[-1500:]}")
    assert not failures, "\n\n".join(failures)
    assert counts(db) == before


def test_an_operator_renames_a_site_and_its_code_stays(app, db):
    ok(app, "sites", "add", "waw", "--name", "Warsaw AI Factory", "--city", "Warsaw", "--country", "PL", *REASON)
    out = ok(app, "sites", "update", "WAW", "--name", "Warsaw AI Factory (PCSS)", "--city", "Poznań", *REASON)
    assert out.startswith("site waw: Warsaw AI Factory (PCSS), Poznań (PL) [id ")
    db.expire_all()
    site = db.exec(select(Site)).one()
    assert (site.code, site.name, site.city, site.country) == ("waw", "Warsaw AI Factory (PCSS)", "Poznań", "PL")
    [event] = db.exec(select(AuditEvent).where(AuditEvent.action == AuditAction.SITE_UPDATED)).all()
    assert event.reason == REASON[1] and event.actor_user_id is None
    assert event.details == {
        "name": {"before": "Warsaw AI Factory", "after": "Warsaw AI Factory (PCSS)"},
        "city": {"before": "Warsaw", "after": "Poznań"},
    }
