"""Metering many notebook servers: batches of sessions are charged together, the cost of a round does not grow
with the sessions in it, workers share a round without charging a session twice, and one session whose charge
fails neither stops nor doubles the others."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from portal_standin.devstack import patience
from sqlmodel import Session, col, func, select

from portal.compute.hub_client import HubServer, HubUnavailable
from portal.compute.launch import MeteringIncomplete, meter_notebooks
from portal.compute.metering_round import EPOCH, PREPARED_AT_MOST
from portal.compute.models import HubListing
from portal.config import load_settings
from portal.db import utcnow
from portal.ledger import services as ledger
from portal.ledger.models import EntryKind, LedgerEntry
from portal.migrations import upgrade
from portal.notebook_models import NotebookSession
from tests.metering.test_worker_scale import HubRunning, running_sessions, up


def usage_entries_by_session(db: Session, ids: set[int]) -> dict[int, int]:
    """How many usage entries each session's ``hub:<session>:<interval end>`` keys have."""
    counts = {session_id: 0 for session_id in ids}
    for key in db.exec(
        select(LedgerEntry.idempotency_key).where(
            LedgerEntry.kind == EntryKind.USAGE, col(LedgerEntry.idempotency_key).startswith("hub:")
        )
    ).all():
        session_id = int(str(key).split(":")[1])
        if session_id in counts:
            counts[session_id] += 1
    return counts


@pytest.fixture(scope="module")
def pg_engine(postgres_url: str):
    upgrade(postgres_url)
    engine = sa.create_engine(postgres_url, pool_size=8, max_overflow=0)
    yield engine
    engine.dispose()


@pytest.mark.postgres
def test_two_workers_running_two_rounds_at_once_split_the_sessions_and_charge_each_exactly_once(
    pg_engine, tmp_path
) -> None:
    settings = load_settings(env="test", database_url=str(pg_engine.url), secret_key="x", instance_path=tmp_path)
    with Session(pg_engine, expire_on_commit=False) as db:  # two projects, so a batch spans two allocations
        sessions = running_sessions(db, 130, ran=timedelta(minutes=10)) + running_sessions(
            db, 90, ran=timedelta(minutes=10)
        )
    ids = {s.id for s in sessions}
    hub = HubRunning([up(s) for s in sessions])
    now = utcnow()
    charged_by: list[set[int]] = [set(), set()]
    together = threading.Barrier(2)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with Session(pg_engine, expire_on_commit=False) as db:
                together.wait(30)
                for _round in range(2):  # the second round claims every session again (nothing is fresh)
                    charged_by[i] |= set(meter_notebooks(db, settings, hub, now, batch=20).charged) & ids
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    first, second = charged_by
    assert first and second, "both workers charged a share of the sessions"
    assert not first & second
    assert first | second == ids
    with Session(pg_engine) as db:
        assert set(usage_entries_by_session(db, ids).values()) == {1}
        seconds = db.exec(
            select(NotebookSession.charged_seconds, NotebookSession.started_at).where(col(NotebookSession.id).in_(ids))
        ).all()
        # the ten minutes before ``now``, and the second or so that making the sessions took on a busy machine
        assert {charged for charged, _ in seconds} <= {600, 601, 602}
        assert all(charged == int((now - started).total_seconds()) for charged, started in seconds)
        assert ledger.balance_mismatches(db) == []
        open_sessions = db.exec(select(NotebookSession).where(col(NotebookSession.id).in_(ids))).all()
        for session in open_sessions:  # leave no open session to the module's other tests
            session.stopped_at, session.stop_reason = now, "stopped by user"
            db.add(session)
        db.commit()


@pytest.mark.postgres
def test_a_rounds_statements_do_not_grow_with_the_sessions_it_meters(pg_engine, tmp_path) -> None:
    settings = load_settings(env="test", database_url=str(pg_engine.url), secret_key="x", instance_path=tmp_path)
    engine = pg_engine
    db = Session(engine, expire_on_commit=False)
    db.execute(sa.update(NotebookSession.__table__).values(stopped_at=utcnow(), stop_reason="stopped by user"))
    db.commit()  # only this test's sessions are open

    def metered(sessions: list[NotebookSession], now: datetime) -> tuple[int, int]:
        """Sessions charged and SQL statements sent by one round over ``sessions``."""
        statements = 0

        def count(*_args: Any) -> None:
            nonlocal statements
            statements += 1

        sa.event.listen(engine, "before_cursor_execute", count)
        try:
            report = meter_notebooks(db, settings, HubRunning([up(s) for s in sessions]), now, batch=1000)
        finally:
            sa.event.remove(engine, "before_cursor_execute", count)
        return len(report.charged), statements

    few = running_sessions(db, 20, ran=timedelta(minutes=10))
    charged_few, for_few = metered(few, utcnow())
    many = few + running_sessions(db, 180, ran=timedelta(minutes=10))
    charged_many, for_many = metered(many, utcnow() + timedelta(minutes=1))
    assert (charged_few, charged_many) == (20, 200)
    db.close()
    assert for_many <= for_few + 2, (for_few, for_many)  # ten times the sessions, the same few statements


def test_a_session_whose_charge_fails_neither_stops_nor_doubles_the_others(db: Session, settings) -> None:
    sessions = running_sessions(db, 6, ran=timedelta(minutes=10))
    broken = sessions[2]
    broken.cpus = 0  # a record no charge can be computed for (0 cores x seconds)
    db.add(broken)
    db.commit()
    hub = HubRunning([up(s) for s in sessions])
    now = utcnow()
    with pytest.raises(MeteringIncomplete) as failed:
        meter_notebooks(db, settings, hub, now)
    assert failed.value.failed == [broken.id]
    others = {s.id for s in sessions} - {broken.id}
    assert set(failed.value.report.charged) == others
    with pytest.raises(MeteringIncomplete):  # the next round tries it again; the others have nothing new
        meter_notebooks(db, settings, hub, now)
    counts = usage_entries_by_session(db, {s.id for s in sessions})
    assert counts == {**dict.fromkeys(others, 1), broken.id: 0}
    db.expire_all()
    assert {s.id: s.charged_seconds for s in sessions} == {**dict.fromkeys(others, 600), broken.id: 0}
    assert (
        db.exec(
            select(func.count()).select_from(NotebookSession).where(col(NotebookSession.stopped_at).is_not(None))
        ).one()
        == 0
    )
    assert ledger.balance_mismatches(db) == []


# --- the round's list of the hub, shared on PostgreSQL ------------------------------------------------------------


def pg_settings(pg_engine, tmp_path):
    return load_settings(env="test", database_url=str(pg_engine.url), secret_key="x", instance_path=tmp_path)


def closed(db: Session, sessions: list[NotebookSession]) -> None:
    """Leave no open session to the module's other tests (a round meters every open session)."""
    for session in sessions:
        db.refresh(session)
        if session.stopped_at is None:
            session.stopped_at, session.stop_reason = utcnow(), "stopped by user"
            db.add(session)
    db.commit()


@pytest.mark.postgres
def test_a_worker_starting_within_the_window_joins_the_round_and_a_later_one_lists_the_hub_again(
    pg_engine, tmp_path
) -> None:
    settings = pg_settings(pg_engine, tmp_path)
    db = Session(pg_engine, expire_on_commit=False)
    sessions = running_sessions(db, 4, ran=timedelta(minutes=10))
    ids = {s.id for s in sessions}
    hub = HubRunning([up(s) for s in sessions])
    began = utcnow()
    first = meter_notebooks(db, settings, hub, began, fresh_for=timedelta(seconds=30))
    assert hub.listings == 1 and set(first.charged) >= ids
    hub.servers = hub.servers[:2]  # two servers stop at the hub after the round listed them
    joined = meter_notebooks(db, settings, hub, began + timedelta(seconds=20), fresh_for=timedelta(seconds=30))
    # the round's list and time: nothing new to charge, and no stop for servers that round saw running
    assert hub.listings == 1
    assert not (set(joined.charged) | set(joined.stopped)) & ids
    later = meter_notebooks(db, settings, hub, began + timedelta(seconds=31), fresh_for=timedelta(seconds=30))
    assert hub.listings == 2
    assert set(later.stopped) & ids == {s.id for s in sessions[2:]}
    assert {i: later.charged[i] for i in ids if i in later.charged} == {s.id: 31 for s in sessions[:2]}
    assert usage_entries_by_session(db, ids) == {**dict.fromkeys(ids, 1), **{s.id: 2 for s in sessions[:2]}}
    closed(db, sessions)
    db.close()


@pytest.mark.postgres
def test_the_shared_list_keeps_what_the_round_reads_of_each_server(pg_engine, tmp_path) -> None:
    settings = pg_settings(pg_engine, tmp_path)
    db = Session(pg_engine, expire_on_commit=False)
    sessions = running_sessions(db, 2, ran=timedelta(minutes=10))
    starting = sessions[1]
    starting.started_at = None  # accepted by the spawn check; the hub reports it ready with its start time
    db.add(starting)
    db.commit()
    started = utcnow() - timedelta(minutes=3)
    hub = HubRunning([up(sessions[0]), HubServer(starting.hub_user, starting.server_name, True, None, started, "/x/")])
    began = utcnow()
    meter_notebooks(db, settings, hub, began, fresh_for=timedelta(seconds=30))
    listing = db.exec(select(HubListing).where(HubListing.hub == hub.api_url)).one()
    assert listing.round_at == began
    rows = {(user, name): (ready, pending, at) for user, name, ready, pending, at in listing.servers}
    assert rows[(starting.hub_user, starting.server_name)] == (True, None, started.isoformat())
    db.refresh(starting)
    assert starting.started_at == started
    closed(db, sessions)
    db.close()


@pytest.mark.postgres
def test_a_worker_claims_and_loads_batches_up_to_a_limit_while_another_lists_the_hub_then_meters_them_in_its_round(
    pg_engine, tmp_path
) -> None:
    settings = pg_settings(pg_engine, tmp_path)
    with Session(pg_engine, expire_on_commit=False) as db:
        sessions = running_sessions(db, 250, ran=timedelta(minutes=10))
    ids = {s.id for s in sessions}
    listing, errors = threading.Event(), []
    at_most = PREPARED_AT_MOST * 10  # batches of 10: 200 of the 250
    locked_while_listing: list[int] = []

    def locked_by_others() -> int:
        """How many of the sessions another transaction holds (a claim not yet committed)."""
        with pg_engine.connect() as connection:
            free = connection.execute(
                select(NotebookSession.id).where(col(NotebookSession.id).in_(ids)).with_for_update(skip_locked=True)
            ).all()
            connection.rollback()
        return len(ids) - len(free)

    class SlowHub(HubRunning):
        """Lists its servers only once the other worker holds as many claims as it takes meanwhile: a hub that
        takes its time to answer."""

        def active_servers(self) -> list[HubServer]:
            listing.set()
            deadline = time.monotonic() + patience(30)
            while locked_by_others() < at_most and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)  # and no more after a while
            locked_while_listing.append(locked_by_others())
            return super().active_servers()

    slow = SlowHub([up(s) for s in sessions])
    other_hub = HubRunning(slow.servers, api_url=slow.api_url)  # the same hub, as the second worker reads it
    with Session(pg_engine) as db:  # listed in an earlier round (in the first ever, the row is new and a second
        db.add(HubListing(hub=slow.api_url, round_at=EPOCH, servers=[]))  # worker waits for it to be written)
        db.commit()
    began = utcnow()
    reports: dict[str, Any] = {}

    def lister() -> None:
        try:
            with Session(pg_engine, expire_on_commit=False) as db:
                reports["lister"] = meter_notebooks(
                    db, settings, slow, began, fresh_for=timedelta(seconds=30), batch=10
                )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=lister)
    thread.start()
    assert listing.wait(patience(30))
    with Session(pg_engine, expire_on_commit=False) as db:
        joined = meter_notebooks(
            db, settings, other_hub, began + timedelta(seconds=2), fresh_for=timedelta(seconds=30), batch=10
        )
    thread.join(patience(60))
    assert errors == [] and not thread.is_alive()

    assert locked_while_listing == [at_most]  # claimed while the hub was listed, up to the limit
    assert slow.listings == 1 and other_hub.listings == 0  # the second worker joined the round
    theirs, mine = set(reports["lister"].charged), set(joined.charged)
    assert len(mine) >= at_most and not theirs & mine and theirs | mine == ids
    with Session(pg_engine) as db:
        assert usage_entries_by_session(db, ids) == dict.fromkeys(ids, 1)
        # charged to the round's time, the lister's, not to the time the second worker started
        charged = db.exec(select(NotebookSession.charged_seconds).where(col(NotebookSession.id).in_(ids))).all()
        assert set(charged) == {int((began - sessions[0].started_at).total_seconds())}
        assert ledger.balance_mismatches(db) == []
        closed(db, list(db.exec(select(NotebookSession).where(col(NotebookSession.id).in_(ids))).all()))


class HubDown(HubRunning):
    def active_servers(self) -> list[HubServer]:
        raise HubUnavailable(f"the hub at {self.api_url} could not be reached")


@pytest.mark.postgres
def test_a_hub_that_does_not_answer_fails_the_round_and_leaves_the_shared_list_unlocked(pg_engine, tmp_path) -> None:
    settings = pg_settings(pg_engine, tmp_path)
    db = Session(pg_engine, expire_on_commit=False)
    sessions = running_sessions(db, 2, ran=timedelta(minutes=10))
    ids = {s.id for s in sessions}
    down = HubDown([up(s) for s in sessions])
    began = utcnow()
    with pytest.raises(HubUnavailable):
        meter_notebooks(db, settings, down, began, fresh_for=timedelta(seconds=30))
    assert not db.in_transaction()
    assert usage_entries_by_session(db, ids) == dict.fromkeys(ids, 0)
    hub = HubRunning(down.servers, api_url=down.api_url)  # the same hub, answering again
    with Session(pg_engine) as other:  # the listing's row is not left locked: another worker's round goes on
        report = meter_notebooks(other, settings, hub, began + timedelta(seconds=5), fresh_for=timedelta(seconds=30))
    assert set(report.charged) >= ids
    closed(db, sessions)
    db.close()


def test_on_sqlite_a_round_lists_the_hub_itself_and_holds_no_write_lock_meanwhile(db: Session, settings) -> None:
    sessions = running_sessions(db, 2, ran=timedelta(minutes=10))
    hub = HubRunning([up(s) for s in sessions])
    seen: list[bool] = []

    class Watched(HubRunning):
        def active_servers(self) -> list[HubServer]:
            seen.append(db.in_transaction())
            return super().active_servers()

    watched = Watched(hub.servers, api_url=hub.api_url)
    report = meter_notebooks(db, settings, watched, utcnow(), fresh_for=timedelta(seconds=30))
    assert seen == [False] and set(report.charged) == {s.id for s in sessions}
    assert db.exec(select(func.count()).select_from(HubListing)).one() == 0
