"""Benchmark: the portal against ColdFront 1.1.10 over real HTTP, same data, same server, pages side by side.

Both apps hold the same shape as ``bench_pages.py``'s large scale: one PI leading ``--projects`` (2,000)
projects, each with 4 more members and 5 allocations (10,000 allocations) on one GPU resource.

- **portal**: a scratch database ``bench_coldfront_portal_*`` built by ``bench_pages.build`` (1,000,000
  ledger entries with their daily usage), served by gunicorn as ``portal serve`` runs it
  (``--config python:portal.gunicorn_conf``, a metrics folder, ``portal:create_app()``).
- **ColdFront**: ``coldfront==1.1.10`` from PyPI, in its own virtualenv outside the repository
  (``$TMPDIR/bench-coldfront-venv``, made once and reused, with ``psycopg2-binary``), configured through its
  environment (``DB_URL``, ``SECRET_KEY``, ``DEBUG=False``, ``PLUGIN_API=True``) and a ``local_settings.py``
  named by ``COLDFRONT_CONFIG`` (persistent database connections, ``CONN_MAX_AGE`` 600 s: fairer to
  ColdFront than its default of one new connection per request, see ``--coldfront-conn-max-age``); a scratch
  database ``bench_coldfront_large`` set up by ``coldfront initial_setup`` (its migrations and default
  choices) and ``collectstatic``, then seeded by ``SEED_SCRIPT`` run by that venv's python with ColdFront's own
  ORM (``bulk_create``): the users, the projects with their ``ProjectUser`` rows (the PI a manager, the members
  users, all active), the active allocations on one cluster resource with an ``AllocationUser`` per member,
  an "Accelerator Usage (Hours)" attribute with its usage per allocation, and 100 historical usage records per
  allocation (ColdFront's nearest thing to ledger entries: 1,000,000 rows of ``simple_history``). Served by
  gunicorn (``coldfront.config.wsgi``).

Both with the same gunicorn: ``--workers`` (2) sync workers of ``--threads`` (1) threads, no access log. Both
logged in as the PI: the portal with the signed session cookie and server-side web session a login makes
(``start_web_session``), the API with a bearer token; ColdFront with a Django session of the PI made through
its ORM (``SessionStore``, as its login view would), its API with a DRF token.

The load generator is ``wrk`` (a separate process; ``apt-get install wrk``), ``--connections`` connections,
each page pair in alternating bursts of ``--seconds`` for ``--rounds`` rounds (the order of the two apps
flips every round), so that the load of a shared machine falls on both alike. Every response must be a 200
(counted by a wrk Lua script; the body sizes are checked before). Printed: a markdown table of req/s per app
(median of the rounds), the ratio portal/ColdFront (goal: at least 2), the response sizes, and SQL statements
and in-process latency per request for both (the portal through Flask's test client as bench_pages does,
ColdFront through Django's test client with ``CaptureQueriesContext``). Both databases are dropped at the end
(``--keep`` keeps them, and the seed script stays in ``$TMPDIR/bench-coldfront``).

    .venv/bin/python benchmarks/bench_coldfront.py \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa
from bench_pages import World, build, open_client
from benchcommon import create_database, drop_database, machine_summary, scratch_databases
from sqlmodel import Session

from portal import create_app
from portal.config import load_settings
from portal.identity.models import User
from portal.identity.services import start_web_session

COLDFRONT = "coldfront==1.1.10"
COLDFRONT_DATABASE = "bench_coldfront_large"
HERE = Path(__file__).resolve().parent

#: Run by ColdFront's python (``DJANGO_SETTINGS_MODULE=coldfront.config.settings``): ``seed N`` fills the
#: database and prints what the benchmark needs as JSON; ``login`` makes a session and a token of the PI;
#: ``probe SESSION PATH...`` times each page through Django's test client and counts its SQL statements.
SEED_SCRIPT = r"""
import json
import statistics
import sys
import time
from datetime import date, timedelta

import django

django.setup()

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.authtoken.models import Token

from coldfront.core.allocation.models import (
    Allocation,
    AllocationAttribute,
    AllocationAttributeType,
    AllocationAttributeUsage,
    AllocationStatusChoice,
    AllocationUser,
    AllocationUserStatusChoice,
)
from coldfront.core.field_of_science.models import FieldOfScience
from coldfront.core.project.models import (
    Project,
    ProjectStatusChoice,
    ProjectUser,
    ProjectUserRoleChoice,
    ProjectUserStatusChoice,
)
from coldfront.core.resource.models import Resource, ResourceType

User = get_user_model()
ALLOCATIONS_PER_PROJECT = 5
MEMBERS_PER_PROJECT = 4
USAGE_RECORDS_PER_ALLOCATION = 100
BATCH = 5000


def seed(projects):
    started = time.perf_counter()
    now = timezone.now()
    with transaction.atomic():
        pi = User.objects.create_user("pi", "pi@example.org", first_name="Pat", last_name="Investigator")
        pi.userprofile.is_pi = True
        pi.userprofile.save()
        members = [
            User.objects.create_user(f"member{i}", f"member{i}@example.org", first_name="Member", last_name=str(i))
            for i in range(MEMBERS_PER_PROJECT)
        ]
        resource = Resource.objects.create(
            name="H100 cluster",
            description="GPU cluster",
            resource_type=ResourceType.objects.get(name="Cluster"),
            is_available=True,
            is_public=True,
            is_allocatable=True,
        )
        active_project = ProjectStatusChoice.objects.get(name="Active")
        fos = FieldOfScience.objects.order_by("pk").first()
        Project.objects.bulk_create(
            [
                Project(
                    title=f"Project {(i * 7919) % projects:05d}",
                    pi=pi,
                    description="A benchmark project with a description long enough.",
                    field_of_science=fos,
                    status=active_project,
                    requires_review=False,
                    created=now,
                    modified=now,
                )
                for i in range(1, projects + 1)
            ],
            batch_size=BATCH,
        )
        project_ids = list(Project.objects.order_by("pk").values_list("pk", flat=True))
        manager = ProjectUserRoleChoice.objects.get(name="Manager")
        user_role = ProjectUserRoleChoice.objects.get(name="User")
        active_member = ProjectUserStatusChoice.objects.get(name="Active")
        ProjectUser.objects.bulk_create(
            [
                ProjectUser(user=user, project_id=p, role=manager if user == pi else user_role, status=active_member)
                for p in project_ids
                for user in [pi, *members]
            ],
            batch_size=BATCH,
        )
        active_allocation = AllocationStatusChoice.objects.get(name="Active")
        Allocation.objects.bulk_create(
            [
                Allocation(
                    project_id=p,
                    status=active_allocation,
                    quantity=1,
                    start_date=date(2026, 7, 1),
                    end_date=date(2027, 1, 1),
                    justification="benchmark",
                    description=f"H100 share {k}",
                )
                for p in project_ids
                for k in range(1, ALLOCATIONS_PER_PROJECT + 1)
            ],
            batch_size=BATCH,
        )
        allocation_ids = list(Allocation.objects.order_by("pk").values_list("pk", flat=True))
        Allocation.resources.through.objects.bulk_create(
            [Allocation.resources.through(allocation_id=a, resource=resource) for a in allocation_ids],
            batch_size=BATCH,
        )
        active_user = AllocationUserStatusChoice.objects.get(name="Active")
        AllocationUser.objects.bulk_create(
            [
                AllocationUser(allocation_id=a, user=user, status=active_user)
                for a in allocation_ids
                for user in [pi, *members]
            ],
            batch_size=BATCH,
        )
        usage_type = AllocationAttributeType.objects.get(name="Accelerator Usage (Hours)")
        AllocationAttribute.objects.bulk_create(
            [
                AllocationAttribute(allocation_attribute_type=usage_type, allocation_id=a, value="1000")
                for a in allocation_ids
            ],
            batch_size=BATCH,
        )
        attributes = list(AllocationAttribute.objects.order_by("pk").values_list("pk", "allocation_id"))
        used = {a: sum(1 + (i * 7919 + a) % 60 for i in range(2, USAGE_RECORDS_PER_ALLOCATION + 1)) / 60
                for _pk, a in attributes}
        AllocationAttributeUsage.objects.bulk_create(
            [AllocationAttributeUsage(allocation_attribute_id=pk, value=used[a]) for pk, a in attributes],
            batch_size=BATCH,
        )
        # the usage as ColdFront's Slurm/XDMoD plugins record it: one historical row per update
        history = AllocationAttributeUsage.history.model
        start = timezone.make_aware(timezone.datetime(2026, 7, 1))
        rows = []
        for pk, a in attributes:
            total = 0.0
            for i in range(1, USAGE_RECORDS_PER_ALLOCATION + 1):
                total += 0 if i == 1 else (1 + (i * 7919 + a) % 60) / 60
                when = start + timedelta(days=i)
                rows.append(
                    history(
                        allocation_attribute_id=pk, value=total, created=start, modified=when, history_date=when,
                        history_type="+" if i == 1 else "~",
                    )
                )
            if len(rows) >= 50_000:
                history.objects.bulk_create(rows, batch_size=BATCH)
                rows = []
        history.objects.bulk_create(rows, batch_size=BATCH)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    middle = Project.objects.order_by("title", "pk")[projects // 2]
    allocation = Allocation.objects.filter(project=middle).order_by("pk").first()
    print(json.dumps({
        "project": middle.pk,
        "allocation": allocation.pk,
        "projects": Project.objects.count(),
        "allocations": Allocation.objects.count(),
        "allocation_users": AllocationUser.objects.count(),
        "usage_records": history.objects.count(),
        "seconds": round(time.perf_counter() - started, 1),
    }))


def login():
    pi = User.objects.get(username="pi")
    store = SessionStore()
    store[SESSION_KEY] = str(pi.pk)
    store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    store[HASH_SESSION_KEY] = pi.get_session_auth_hash()
    store.create()
    token, _ = Token.objects.get_or_create(user=pi)
    print(json.dumps({"cookie": f"{settings.SESSION_COOKIE_NAME}={store.session_key}", "token": token.key}))


def probe(cookie, token, requests, paths):
    client = Client()
    name, value = cookie.split("=", 1)
    client.cookies[name] = value
    out = {}
    for path in paths:
        headers = {"HTTP_AUTHORIZATION": f"Token {token}"} if path.startswith("/api/") else {}
        latencies, queries = [], []
        for _ in range(requests + 2):
            with CaptureQueriesContext(connection) as captured:
                started = time.perf_counter()
                response = client.get(path, secure=True, **headers)
                latencies.append(time.perf_counter() - started)
            assert response.status_code == 200, (path, response.status_code)
            queries.append(len(captured.captured_queries))
        out[path] = {"ms": 1000 * statistics.median(latencies[2:]), "queries": queries[-1],
                     "bytes": len(response.content)}
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "seed":
        seed(int(sys.argv[2]))
    elif sys.argv[1] == "login":
        login()
    else:
        probe(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:])
"""

LOCAL_SETTINGS = """import os

DATABASES["default"]["CONN_MAX_AGE"] = int(os.environ.get("BENCH_CONN_MAX_AGE", "600"))  # noqa: F821
"""

#: Counts the responses that are not 200 (wrk itself counts only those outside 2xx and 3xx).
WRK_SCRIPT = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function response(status, headers, body) if status ~= 200 then bad = bad + 1 end end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("bad") end
  io.write(string.format("NON200 %d\\n", total))
end
"""


# --- ColdFront: install, configure, seed -------------------------------------------------------------------


def work_dir() -> Path:
    folder = Path(tempfile.gettempdir()) / "bench-coldfront"
    folder.mkdir(exist_ok=True)
    return folder


def coldfront_venv(venv: Path) -> Path:
    """The venv's python, with ColdFront installed (once: the venv is reused when it has it)."""
    python = venv / "bin" / "python"
    if not (venv / "bin" / "coldfront").exists():
        subprocess.run(["python3.11", "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", COLDFRONT, "psycopg2-binary", "gunicorn"], check=True
        )
    return python


def coldfront_env(server_url: str, conn_max_age: int) -> dict[str, str]:
    url = sa.engine.make_url(server_url)
    auth = url.username or "postgres"
    if url.password:
        auth += f":{url.password}"
    folder = work_dir()
    (folder / "local_settings.py").write_text(LOCAL_SETTINGS)
    (folder / "seed_coldfront.py").write_text(SEED_SCRIPT)
    return {
        **os.environ,
        "DB_URL": f"psql://{auth}@{url.host or '127.0.0.1'}:{url.port or 5432}/{COLDFRONT_DATABASE}",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "DEBUG": "False",
        "PLUGIN_API": "True",
        "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
        "COLDFRONT_CONFIG": str(folder / "local_settings.py"),
        "STATIC_ROOT": str(folder / "static"),
        "BENCH_CONN_MAX_AGE": str(conn_max_age),
        "DJANGO_SETTINGS_MODULE": "coldfront.config.settings",
    }


def coldfront_run(python: Path, env: dict[str, str], *args: str) -> str:
    out = subprocess.run([str(python), *args], env=env, cwd=work_dir(), capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{shlex.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return out.stdout


def setup_coldfront(python: Path, env: dict[str, str], projects: int) -> dict:
    coldfront = str(python.parent / "coldfront")
    coldfront_run(python, env, coldfront, "initial_setup", "-f")
    coldfront_run(python, env, coldfront, "collectstatic", "--noinput")
    seeded = coldfront_run(python, env, str(work_dir() / "seed_coldfront.py"), "seed", str(projects))
    return json.loads(seeded.strip().splitlines()[-1])


# --- servers -----------------------------------------------------------------------------------------------


@contextmanager
def served(command: list[str], env: dict[str, str], port: int, cwd: Path, log: Path) -> Iterator[None]:
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/robots.txt", timeout=2)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{command[0]} did not start:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.3)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def gunicorn_args(port: int, workers: int, threads: int) -> list[str]:
    return ["--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--threads", str(threads)]


def portal_cookie(url: str, world: World, secret_key: str, instance: str) -> str:
    """The cookie a login gives the PI: the signed Flask session naming a server-side web session."""
    app = create_app(
        load_settings(
            env="test",
            database_url=url,
            secret_key=secret_key,
            base_url="http://127.0.0.1",
            instance_path=Path(instance) / "cookie",
        )
    )
    engine = app.extensions["portal.engine"]
    with Session(engine) as db:
        pi = db.get(User, world.pi_id)
        assert pi is not None
        key = start_web_session(db, pi, None, lifetime=timedelta(days=1))
    engine.dispose()
    value = app.session_interface.get_signing_serializer(app).dumps(  # type: ignore[attr-defined]
        {"_user_id": str(world.pi_id), "_fresh": True, "web_session": key}
    )
    return f"{app.config['SESSION_COOKIE_NAME']}={value}"


# --- load --------------------------------------------------------------------------------------------------


@dataclass
class Side:
    base: str
    path: str
    headers: dict[str, str]
    rates: list[float] = field(default_factory=list)
    size: int = 0
    queries: int = 0
    inprocess_ms: float = 0.0


@dataclass
class Pair:
    label: str
    portal: Side
    coldfront: Side
    note: str = ""


def check(side: Side) -> None:
    response = httpx.get(side.base + side.path, headers=side.headers, timeout=60)
    assert response.status_code == 200, (side.path, response.status_code, response.text[:300])
    side.size = len(response.content)


def wrk(side: Side, seconds: int, connections: int, script: Path) -> float:
    headers = [arg for name, value in side.headers.items() for arg in ("-H", f"{name}: {value}")]
    command = [
        "wrk",
        "-t",
        str(min(2, connections)),
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        *headers,
        side.base + side.path,
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    bad = int(re.search(r"NON200 (\d+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Socket errors: (.*)", out)
    assert bad == 0 and not errors, (side.path, out)
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def measure(pairs: list[Pair], rounds: int, seconds: int, connections: int) -> None:
    script = work_dir() / "count_non200.lua"
    script.write_text(WRK_SCRIPT)
    for side in [s for pair in pairs for s in (pair.portal, pair.coldfront)]:  # warm both up, untimed
        wrk(side, 2, connections, script)
    for round_ in range(rounds):
        for pair in pairs:
            sides = [pair.portal, pair.coldfront] if round_ % 2 == 0 else [pair.coldfront, pair.portal]
            for side in sides:
                side.rates.append(wrk(side, seconds, connections, script))
            print(
                f"round {round_ + 1} {pair.label}: portal {pair.portal.rates[-1]:.1f} req/s, "
                f"ColdFront {pair.coldfront.rates[-1]:.1f} req/s, load {os.getloadavg()[0]:.2f}",
                flush=True,
            )


def inprocess_portal(url: str, world: World, instance: str, pairs: list[Pair], requests: int) -> None:
    """Statements and latency per request through Flask's test client, as bench_pages measures them."""
    client = open_client(url, world, instance)
    for pair in pairs:
        page = next(p for p in client.pages if p.path == pair.portal.path)
        latencies = []
        for i in range(requests + 2):
            client.counter["queries"] = 0
            headers = pair.portal.headers if page.path.startswith("/api/") else {}
            started = time.perf_counter()
            response = client.client.get(page.path, headers=headers)
            if i >= 2:
                latencies.append(time.perf_counter() - started)
            assert response.status_code == 200, (page.path, response.status_code)
        pair.portal.queries = client.counter["queries"]
        pair.portal.inprocess_ms = 1000 * statistics.median(latencies)
    client.engine.dispose()


# --- report ------------------------------------------------------------------------------------------------


def report(pairs: list[Pair], args: argparse.Namespace, load_before: tuple, load_after: tuple) -> None:
    print(f"\nCommand: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"nproc {os.cpu_count()}; load average before {' '.join(f'{x:.2f}' for x in load_before)}, "
        f"after {' '.join(f'{x:.2f}' for x in load_after)}"
    )
    print(
        f"wrk: {args.connections} connections, {args.rounds} rounds of {args.seconds} s per app and page, "
        f"alternating; gunicorn: {args.workers} sync workers x {args.threads} thread(s) each app\n"
    )
    print(
        "| page (portal / ColdFront) | portal req/s | ColdFront req/s | ratio | KiB portal / ColdFront "
        "| statements portal / ColdFront | in-process ms portal / ColdFront |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for pair in pairs:
        p, c = statistics.median(pair.portal.rates), statistics.median(pair.coldfront.rates)
        print(
            f"| {pair.label} (`{pair.portal.path}` / `{pair.coldfront.path}`) | {p:.1f} | {c:.1f} | "
            f"{p / c:.2f}{'' if p / c >= 2 else ' (under 2)'} | {pair.portal.size / 1024:.1f} / "
            f"{pair.coldfront.size / 1024:.1f} | {pair.portal.queries} / {pair.coldfront.queries} | "
            f"{pair.portal.inprocess_ms:.1f} / {pair.coldfront.inprocess_ms:.1f} |"
        )
    print("\nreq/s per round (portal | ColdFront):")
    for pair in pairs:
        rates = ", ".join(f"{a:.1f}|{b:.1f}" for a, b in zip(pair.portal.rates, pair.coldfront.rates, strict=True))
        print(f"  {pair.label}: {rates}{'  ' + pair.note if pair.note else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="a PostgreSQL server (any database on it)")
    parser.add_argument("--projects", type=int, default=2000, help="projects of the PI (5 allocations each)")
    parser.add_argument("--seconds", type=int, default=10, help="seconds of each burst")
    parser.add_argument("--rounds", type=int, default=3, help="bursts per app and page")
    parser.add_argument("--connections", type=int, default=4, help="wrk's concurrent connections")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers of each app")
    parser.add_argument("--threads", type=int, default=1, help="threads per gunicorn worker")
    parser.add_argument("--probe-requests", type=int, default=10, help="in-process requests per page")
    parser.add_argument(
        "--venv", type=Path, default=Path(tempfile.gettempdir()) / "bench-coldfront-venv", help="ColdFront's venv"
    )
    parser.add_argument(
        "--coldfront-conn-max-age", type=int, default=600, help="ColdFront's CONN_MAX_AGE (0: its default)"
    )
    parser.add_argument("--portal-port", type=int, default=18101)
    parser.add_argument("--coldfront-port", type=int, default=18102)
    parser.add_argument(
        "--pages",
        default="dashboard,organisation,project,allocation,api",
        help="the page pairs to measure, of dashboard,organisation,project,allocation,api",
    )
    parser.add_argument("--keep", action="store_true", help="keep both databases (and print their names)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    print(machine_summary(args.database_url))
    python = coldfront_venv(args.venv)
    print(f"ColdFront: {coldfront_run(python, {**os.environ}, '-c', 'import coldfront; print(coldfront.VERSION)')}")
    env = coldfront_env(args.database_url, args.coldfront_conn_max_age)
    drop_database(args.database_url, COLDFRONT_DATABASE)
    create_database(args.database_url, COLDFRONT_DATABASE)
    try:
        with scratch_databases(args.database_url, "coldfront_portal") as scratch, tempfile.TemporaryDirectory() as tmp:
            world = World("large", args.projects)
            name, url = scratch.create(world.label)
            build(url, world)
            print(
                f"portal ({name}): {world.projects:,} projects, {world.entries:,} ledger entries; "
                f"built in {world.build_seconds:.1f} s"
            )
            started = time.perf_counter()
            seeded = setup_coldfront(python, env, args.projects)
            print(
                f"ColdFront ({COLDFRONT_DATABASE}): {seeded['projects']:,} projects, {seeded['allocations']:,} "
                f"allocations, {seeded['allocation_users']:,} allocation users, {seeded['usage_records']:,} usage "
                f"records; set up in {time.perf_counter() - started:.1f} s (seeded in {seeded['seconds']} s)",
                flush=True,
            )
            login = json.loads(coldfront_run(python, env, str(work_dir() / "seed_coldfront.py"), "login"))
            secret_key = secrets.token_urlsafe(48)
            cookie = portal_cookie(url, world, secret_key, tmp)
            metrics = Path(tmp) / "metrics"
            portal_env = {
                **os.environ,
                "PORTAL_ENV": "development",  # production also insists on https, OIDC and Stripe; env changes no code
                "PORTAL_DATABASE_URL": url,
                "PORTAL_SECRET_KEY": secret_key,
                "PORTAL_BASE_URL": "http://127.0.0.1",
                "PORTAL_INSTANCE_PATH": str(Path(tmp) / "instance"),
                "PORTAL_LOG_LEVEL": "WARNING",
                "PROMETHEUS_MULTIPROC_DIR": str(metrics),
            }
            portal_base = f"http://127.0.0.1:{args.portal_port}"
            cold_base = f"http://127.0.0.1:{args.coldfront_port}"
            pages = {
                "dashboard": ("dashboard / home", "/", "/"),
                "organisation": ("organisation page / project list", f"/organisations/{world.org_id}", "/project/"),
                "project": ("project page", f"/projects/{world.project_id}", f"/project/{seeded['project']}/"),
                "allocation": (
                    "allocation page",
                    f"/projects/{world.project_id}/allocations/{world.allocation_id}",
                    f"/allocation/{seeded['allocation']}/",
                ),
                "api": ("API projects", "/api/v1/projects", "/api/projects/"),
            }
            pairs = [
                Pair(
                    label,
                    Side(portal_base, mine, {"Authorization": f"Bearer {world.token}"} if api else {"Cookie": cookie}),
                    Side(
                        cold_base,
                        theirs,
                        {"Authorization": f"Token {login['token']}"} if api else {"Cookie": login["cookie"]},
                    ),
                )
                for label, mine, theirs in [pages[key] for key in args.pages.split(",")]
                for api in [mine.startswith("/api/")]
            ]
            for pair in pairs:
                if pair.label == "API projects":
                    pair.note = "ColdFront's API (its bundled api plugin) is not paginated: all the PI's projects"
            inprocess_portal(url, world, tmp, pairs, args.probe_requests)
            probe = json.loads(
                coldfront_run(
                    python,
                    env,
                    str(work_dir() / "seed_coldfront.py"),
                    "probe",
                    login["cookie"],
                    login["token"],
                    str(args.probe_requests),
                    *[pair.coldfront.path for pair in pairs],
                )
            )
            for pair in pairs:
                pair.coldfront.queries = probe[pair.coldfront.path]["queries"]
                pair.coldfront.inprocess_ms = probe[pair.coldfront.path]["ms"]
            portal_cmd = [
                sys.executable,
                "-m",
                "gunicorn",
                *gunicorn_args(args.portal_port, args.workers, args.threads),
                "--config",
                "python:portal.gunicorn_conf",
                "portal:create_app()",
            ]
            cold_cmd = [
                str(python.parent / "gunicorn"),
                *gunicorn_args(args.coldfront_port, args.workers, args.threads),
                "coldfront.config.wsgi",
            ]
            with (
                served(portal_cmd, portal_env, args.portal_port, HERE.parent, work_dir() / "portal.log"),
                served(cold_cmd, env, args.coldfront_port, work_dir(), work_dir() / "coldfront.log"),
            ):
                for pair in pairs:
                    check(pair.portal)
                    check(pair.coldfront)
                measure(pairs, args.rounds, args.seconds, args.connections)
            if args.keep:
                scratch.names.remove(name)
                print(f"kept {name} and {COLDFRONT_DATABASE}")
    finally:
        if not args.keep:
            drop_database(args.database_url, COLDFRONT_DATABASE)
    report(pairs, args, load_before, os.getloadavg())


if __name__ == "__main__":
    main()
