"""Benchmark: notebook launch latency through the portal against a bare hub spawn, and the cost of metering.

Everything real: the portal (``create_app`` on a scratch PostgreSQL database, served by werkzeug in a thread,
as in the tests), two JupyterHubs with configurable-http-proxy and SimpleLocalProcessSpawner:

- hub P: ``hub_config/jupyterhub_config.py`` as deployed; every spawn asks the portal's spawn check;
- hub B: the same file loaded by ``benchmarks/hub_bare_config.py``, which only switches the spawn check off
  (and sets the environment the check would have set for the ``cpu`` profile), so the servers are the same.

(a) Launch latency, ``--runs`` times each, interleaved (P then B, then B then P, ...):

- portal: ``launch_notebook`` (the service the Launch button calls: membership and profile checks,
  ``ensure_user``, a free server name, the hub's POST, which waits for the portal's spawn check), then the
  same wait as the session page (poll the hub until the server is ready), then a kernel "Python 3 (Dask GPU)"
  is started over the hub's proxy and ``client.submit(sum, [1, 2, 3]).result()`` runs in it;
- bare: ``ensure_user`` and the hub's POST with the same options on hub B, then the same wait and kernel.

Each clock runs from the first call to the kernel's result. Servers are stopped (and removed) between runs.

(b) Metering cost per active server per worker cycle (``meter_notebooks``):

- real: ``--real-servers`` servers launched through the portal on hub P, metered for ``--rounds`` rounds
  (each ``now`` 60 s after the previous, so each round charges every server);
- captured: the hub's answer for those real servers (``GET /hub/api/users?state=active``) is captured and
  replayed, with K copies of a server under K users, by a small local HTTP server standing in for the hub's
  API, so that K = 1, 10, 50 (``--sessions``) sessions accepted by the real spawn check (K users, K projects,
  K allocations) are metered without K real servers. This measures the portal's side: one HTTP request,
  the database and the ledger per session.

SQL statements are counted on the portal's engine; HTTP requests to the hub on the client's session.

    .venv/bin/python benchmarks/bench_notebooks.py \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa
from benchcommon import check_invariants, machine_summary, make_project, make_site, person, scratch_databases
from sqlmodel import Session
from werkzeug.serving import make_server

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from portal_standin.devhub import HubProcess  # noqa: E402
from portal_standin.devstack import free_port  # noqa: E402

from portal import create_app  # noqa: E402
from portal.compute.hub_client import HubClient  # noqa: E402
from portal.compute.launch import NEVER_STARTED_AFTER, launch_notebook, meter_notebooks, stop_notebook  # noqa: E402
from portal.compute.services import check_spawn, hub_username  # noqa: E402
from portal.config import Settings, load_settings  # noqa: E402
from portal.db import utcnow  # noqa: E402
from portal.identity.models import User  # noqa: E402
from portal.ledger import services as ledger  # noqa: E402
from portal.ledger.models import Allocation, AllocationSource  # noqa: E402
from tests.compute.test_hub import SERVICE_TOKEN, run_in_kernel  # noqa: E402
from tests.json_server import Answer, Asked, JsonServer  # noqa: E402

BARE_CONFIG = Path(__file__).resolve().parent / "hub_bare_config.py"
KERNEL = "python3-dask-gpu"
CODE = "print(client.submit(sum, [1, 2, 3]).result())"
OPTIONS_HOURS = 1
HOUR = 3600


# --- the stack ------------------------------------------------------------------------------------------------


@contextmanager
def served(app: Any) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)
        server.server_close()


def hub(settings: Settings, portal_url: str, state: Path, *, config: Path | None = None) -> HubProcess:
    process = HubProcess(
        state,
        portal_url=portal_url,
        portal_api_token=settings.hub_spawn_check_token,
        service_token=SERVICE_TOKEN,
        env={
            "PORTAL_HUB_OAUTH_CLIENT_ID": settings.hub_oauth_client_id,
            "PORTAL_HUB_OAUTH_CLIENT_SECRET": settings.hub_oauth_client_secret,
            "HUB_CULL_IDLE_SECONDS": "0",
            "DASK_KERNEL_N_WORKERS": "2",
        },
        log_path=state.parent / f"{state.name}.log",
    )
    if config is not None:
        process.config = config
    return process


class Counter:
    """SQL statements on an engine and HTTP requests on a requests.Session, while ``counting``."""

    def __init__(self, engine: sa.Engine, http: requests.Session) -> None:
        self.sql = 0
        self.http = 0
        sa.event.listen(engine, "before_cursor_execute", self._on_sql)
        http.hooks["response"].append(self._on_http)

    def _on_sql(self, *_args: Any) -> None:
        self.sql += 1

    def _on_http(self, response: requests.Response, *_args: Any, **_kwargs: Any) -> requests.Response:
        self.http += 1
        return response

    def reset(self) -> None:
        self.sql = self.http = 0


# --- (a) launch latency ----------------------------------------------------------------------------------------


def wait_ready(client: HubClient, user: str, name: str, timeout: float = 90) -> str:
    """Poll the hub as the session page does (more often: every 0.1 s) until the server is ready; its URL."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = client.server(user, name)
        if found is not None and found.ready:
            return found.url
        time.sleep(0.1)
    raise TimeoutError(f"{user}/{name} was not ready within {timeout} s")


def kernel_result(process: HubProcess, server_url: str) -> None:
    headers = {"Authorization": f"token {SERVICE_TOKEN}"}
    kernel = requests.post(f"{process.url}{server_url}api/kernels", headers=headers, json={"name": KERNEL}, timeout=60)
    kernel.raise_for_status()
    out = run_in_kernel(process, server_url, kernel.json()["id"], CODE, timeout=60)
    assert out.strip().splitlines()[-1] == "6", out


def wait_gone(client: HubClient, user: str, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and client.server(user, name) is not None:
        time.sleep(0.1)


def portal_launch(db: Session, settings: Settings, client: HubClient, hub_p: HubProcess, pi: User, alloc: int):
    start = time.perf_counter()
    launch = launch_notebook(db, settings, client, pi, allocation_id=alloc, profile="cpu", hours=OPTIONS_HOURS)
    posted = time.perf_counter()
    url = wait_ready(client, launch.hub_user, launch.server_name)
    ready = time.perf_counter()
    kernel_result(hub_p, url)
    done = time.perf_counter()
    assert launch.session is not None
    stop_notebook(db, settings, client, pi, session_id=launch.session.id)
    wait_gone(client, launch.hub_user, launch.server_name)
    return posted - start, ready - start, done - start


def bare_launch(client: HubClient, hub_b: HubProcess, user: str, name: str, alloc: int):
    start = time.perf_counter()
    client.ensure_user(user)
    client.start_server(user, name, {"allocation": alloc, "profile": "cpu", "hours": OPTIONS_HOURS})
    posted = time.perf_counter()
    url = wait_ready(client, user, name)
    ready = time.perf_counter()
    kernel_result(hub_b, url)
    done = time.perf_counter()
    client.stop_server(user, name)
    wait_gone(client, user, name)
    return posted - start, ready - start, done - start


def bench_launch(db, settings, client_p, client_b, hub_p, hub_b, pi, alloc, runs: int) -> dict[str, Any]:
    results: dict[str, list[tuple[float, float, float]]] = {"portal": [], "bare": []}
    # One warm-up of each (first imports of the kernel's Dask, first proxy routes), not counted.
    portal_launch(db, settings, client_p, hub_p, pi, alloc)
    bare_launch(client_b, hub_b, hub_username(pi), "warmup", alloc)
    for i in range(runs):
        order = ["portal", "bare"] if i % 2 == 0 else ["bare", "portal"]
        for which in order:
            if which == "portal":
                results["portal"].append(portal_launch(db, settings, client_p, hub_p, pi, alloc))
            else:
                results["bare"].append(bare_launch(client_b, hub_b, hub_username(pi), f"bare-{i}", alloc))
            print(f"  run {i + 1} {which}: " + ", ".join(f"{t:.2f} s" for t in results[which][-1]), flush=True)
    summary: dict[str, Any] = {}
    for which, rows in results.items():
        summary[which] = {
            "post_s": statistics.median(r[0] for r in rows),
            "ready_s": statistics.median(r[1] for r in rows),
            "result_s": statistics.median(r[2] for r in rows),
            "all_result_s": [round(r[2], 2) for r in rows],
        }
    summary["ratio"] = summary["portal"]["result_s"] / summary["bare"]["result_s"]
    return summary


def bench_portal_share(db, settings, portal_url: str, client: HubClient, pi: User, alloc: int, n: int = 20):
    """The portal's own part of a launch, timed without the spawn's noise: the spawn check's HTTP round trip
    (as the hub makes it) and the one extra hub look-up ``launch_notebook`` makes (a free server name)."""
    body = {
        "user": hub_username(pi),
        "server_name": "overhead",
        "user_options": {"allocation": alloc, "profile": "cpu", "hours": OPTIONS_HOURS},
    }
    headers = {"Authorization": f"Bearer {settings.hub_spawn_check_token}"}
    checks, lookups = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        answer = requests.post(f"{portal_url}/api/v1/hub/spawn-check", json=body, headers=headers, timeout=30)
        checks.append(time.perf_counter() - t0)
        assert answer.status_code == 200, answer.text
        t0 = time.perf_counter()
        client.get_user(hub_username(pi))
        lookups.append(time.perf_counter() - t0)
    # The checks recorded sessions that never start: close them now, so that they do not disturb (b).
    meter_notebooks(db, settings, client, utcnow() + NEVER_STARTED_AFTER + timedelta(seconds=1))
    return {"spawn_check_ms": 1000 * statistics.median(checks), "hub_lookup_ms": 1000 * statistics.median(lookups)}


# --- (b) metering ---------------------------------------------------------------------------------------------


class CapturedHub:
    """Answers ``GET /hub/api/users`` (paginated) with a captured answer of the real hub, multiplied."""

    def __init__(self, users: list[dict[str, Any]]) -> None:
        self.users = users
        self.http = JsonServer(self.answer)

    def answer(self, asked: Asked) -> Answer:
        query = asked.query
        offset, limit = int(query.get("offset", ["0"])[0]), int(query.get("limit", ["200"])[0])
        following = {"offset": offset + limit} if offset + limit < len(self.users) else None
        items = self.users[offset : offset + limit]
        return Answer(200, {"items": items, "_pagination": {"offset": offset, "limit": limit, "next": following}})

    @property
    def url(self) -> str:
        return self.http.url

    def stop(self) -> None:
        self.http.stop()


def timed_rounds(
    meter: Callable[[Any], Any], counter: Counter, rounds: int, start: Any
) -> tuple[list[float], list[int], list[int], list[int]]:
    seconds, sql, http, charged = [], [], [], []
    for k in range(1, rounds + 1):
        counter.reset()
        t0 = time.perf_counter()
        report = meter(start + timedelta(seconds=60 * k))
        seconds.append(time.perf_counter() - t0)
        sql.append(counter.sql)
        http.append(counter.http)
        charged.append(len(report.charged))
    return seconds, sql, http, charged


def bench_metering_real(db, settings, client_p, counter, pi, alloc, servers: int, rounds: int):
    launched = []
    for _ in range(servers):
        launch = launch_notebook(db, settings, client_p, pi, allocation_id=alloc, profile="cpu", hours=OPTIONS_HOURS)
        wait_ready(client_p, launch.hub_user, launch.server_name)
        launched.append(launch)
    meter_notebooks(db, settings, client_p)  # marks them started
    captured = client_p._request(
        "GET", "/users", ok=(200,), params={"state": "active"}, headers={"Accept": "application/json"}
    ).json()
    start = utcnow()
    seconds, sql, http, charged = timed_rounds(
        lambda now: meter_notebooks(db, settings, client_p, now), counter, rounds, start
    )
    assert all(c == servers for c in charged), charged
    for launch in launched:
        stop_notebook(db, settings, client_p, pi, session_id=launch.session.id, now=start + timedelta(hours=1))
    return {
        "servers": servers,
        "round_s": statistics.median(seconds),
        "per_server_ms": 1000 * statistics.median(seconds) / servers,
        "sql_per_server": statistics.median(sql) / servers,
        "http_per_round": statistics.median(http),
    }, captured


def bench_metering_captured(engine, settings, world, captured, sizes: list[int], rounds: int):
    model = next(iter(next(u for u in captured if u.get("servers"))["servers"].values()))
    results = []
    for size in sizes:
        with Session(engine, expire_on_commit=False) as db:
            users: list[dict[str, Any]] = []
            now = utcnow()
            for j in range(size):
                member = person(db, f"Member{size}x{j}")
                project = make_project(db, member, f"Metered {size}-{j}")
                allocation = ledger.open_allocation(
                    db,
                    None,
                    project=project,
                    resource=world.cpu,
                    amount=100 * HOUR,
                    starts_at=now - timedelta(days=1),
                    ends_at=now + timedelta(days=30),
                    source=AllocationSource.AWARD,
                    title=f"cpu {size}-{j}",
                )
                name, server_name = hub_username(member), f"a{allocation.id}-1"
                options = {"allocation": allocation.id, "profile": "cpu", "hours": OPTIONS_HOURS}
                check_spawn(db, settings, name, server_name, options)
                server = copy.deepcopy(model)
                server.update(name=server_name, url=f"/user/{name}/{server_name}/")
                users.append({"name": name, "kind": "user", "servers": {server_name: server}})
            hub_stand_in = CapturedHub(users)
            http = requests.Session()
            client = HubClient(hub_stand_in.url, SERVICE_TOKEN, session=http)
            counter = Counter(engine, http)
            try:
                counter.reset()
                t0 = time.perf_counter()
                first = meter_notebooks(db, settings, client)
                first_s, first_sql = time.perf_counter() - t0, counter.sql
                assert len(first.started) == size, first
                start = utcnow()
                seconds, sql, http_calls, charged = timed_rounds(
                    lambda at, db=db, client=client: meter_notebooks(db, settings, client, at), counter, rounds, start
                )
                assert all(c == size for c in charged), charged
                # Close them (a round after the hub no longer lists them), so the next size starts clean.
                hub_stand_in.users = []
                meter_notebooks(db, settings, client, start + timedelta(minutes=rounds + 1))
            finally:
                hub_stand_in.stop()
                sa.event.remove(engine, "before_cursor_execute", counter._on_sql)
        results.append(
            {
                "sessions": size,
                "first_round_s": first_s,
                "first_round_sql_per_session": first_sql / size,
                "round_s": statistics.median(seconds),
                "per_session_ms": 1000 * statistics.median(seconds) / size,
                "sql_per_session": statistics.median(sql) / size,
                "http_per_round": statistics.median(http_calls),
            }
        )
        print(f"  K={size}: {results[-1]}", flush=True)
    return results


# --- main -------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="a PostgreSQL server (user with CREATEDB)")
    parser.add_argument("--runs", type=int, default=5, help="launches of each kind (default 5)")
    parser.add_argument("--real-servers", type=int, default=2, help="real servers metered (default 2)")
    parser.add_argument("--sessions", default="1,10,50", help="sessions metered with the captured answer")
    parser.add_argument("--rounds", type=int, default=5, help="metering rounds per measurement (median)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sessions.split(",") if s]

    print(machine_summary(args.database_url), flush=True)
    with scratch_databases(args.database_url, "notebooks") as scratch, tempfile.TemporaryDirectory() as tmp:
        _name, url = scratch.create()
        settings = load_settings(
            env="test",
            instance_path=Path(tmp) / "instance",
            database_url=url,
            secret_key="bench-secret-key",  # noqa: S106
            oidc_providers=[],
            hub_api_token=SERVICE_TOKEN,
        )
        hub_port = free_port()
        settings = settings.model_copy(update={"hub_url": f"http://127.0.0.1:{hub_port}"})
        app = create_app(settings)
        engine = app.extensions["portal.engine"]
        today = utcnow().date()
        quarters = sorted({ledger.quarter_of(today + timedelta(days=d)) for d in (-40, 0, 40)})
        with Session(engine, expire_on_commit=False) as db:
            world = make_site(db, quarters, capacity=10_000_000 * HOUR)
            project = make_project(db, world.pi, "Launch bench")
            now = utcnow()
            allocation: Allocation = ledger.open_allocation(
                db,
                None,
                project=project,
                resource=world.cpu,
                amount=10_000 * HOUR,
                starts_at=now - timedelta(days=1),
                ends_at=now + timedelta(days=30),
                source=AllocationSource.AWARD,
                title="cpu for the bench",
            )
        with served(app) as portal_url:
            hub_p = hub(settings, portal_url, Path(tmp) / "hub-p")
            hub_p.port = hub_port
            hub_b = hub(settings, portal_url, Path(tmp) / "hub-b", config=BARE_CONFIG)
            try:
                hub_p.start()
                hub_b.start()
                http_p = requests.Session()
                client_p = HubClient.from_settings(settings, session=http_p)
                client_b = HubClient(hub_b.url, SERVICE_TOKEN)
                with Session(engine, expire_on_commit=False) as db:
                    pi = db.get(User, world.pi.id)
                    print(f"(a) launch to kernel result, {args.runs} runs each, interleaved", flush=True)
                    launch = bench_launch(db, settings, client_p, client_b, hub_p, hub_b, pi, allocation.id, args.runs)
                    launch["share"] = bench_portal_share(db, settings, portal_url, client_p, pi, allocation.id)
                    print(json.dumps(launch, indent=2), flush=True)
                    print(f"(b) metering, {args.real_servers} real servers, {args.rounds} rounds", flush=True)
                    counter = Counter(engine, http_p)
                    real, captured = bench_metering_real(
                        db, settings, client_p, counter, pi, allocation.id, args.real_servers, args.rounds
                    )
                    sa.event.remove(engine, "before_cursor_execute", counter._on_sql)
                    print(json.dumps(real, indent=2), flush=True)
            finally:
                hub_p.stop()
                hub_b.stop()
            print(f"(b) metering with the captured answer, K = {sizes}, {args.rounds} rounds", flush=True)
            metered = bench_metering_captured(engine, settings, world, captured, sizes, args.rounds)
        engine.dispose()
        check_invariants(url)
        print("ledger invariants hold", flush=True)
    print_table(launch, real, metered)


def print_table(launch: dict[str, Any], real: dict[str, Any], metered: list[dict[str, Any]]) -> None:
    p, b = launch["portal"], launch["bare"]
    print("\n| path | POST answered | server ready | kernel result |")
    print("| --- | --- | --- | --- |")
    print(f"| portal (launch_notebook) | {p['post_s']:.2f} s | {p['ready_s']:.2f} s | {p['result_s']:.2f} s |")
    print(f"| bare hub spawn | {b['post_s']:.2f} s | {b['ready_s']:.2f} s | {b['result_s']:.2f} s |")
    print(f"\nportal / bare (kernel result, medians): {launch['ratio']:.3f}")
    share = launch["share"]
    own_ms = share["spawn_check_ms"] + share["hub_lookup_ms"]
    print(
        f"the portal's own part: spawn check round trip {share['spawn_check_ms']:.1f} ms + one extra hub look-up "
        f"{share['hub_lookup_ms']:.1f} ms = {100 * own_ms / 1000 / b['result_s']:.2f} % of the bare launch's median"
    )
    print("\n| sessions | hub | round (median) | per session | SQL per session | HTTP per round | first round |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {real['servers']} | real | {1000 * real['round_s']:.1f} ms | {real['per_server_ms']:.1f} ms | "
        f"{real['sql_per_server']:.1f} | {real['http_per_round']} | |"
    )
    for m in metered:
        print(
            f"| {m['sessions']} | captured | {1000 * m['round_s']:.1f} ms | {m['per_session_ms']:.1f} ms | "
            f"{m['sql_per_session']:.1f} | {m['http_per_round']} | {1000 * m['first_round_s']:.0f} ms, "
            f"{m['first_round_sql_per_session']:.1f} SQL/session |"
        )


if __name__ == "__main__":
    main()
