"""``portal demo``: the whole portal on one machine, with local identity providers and demo data."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlmodel import Session, select
from werkzeug.serving import run_simple

from portal import create_app
from portal.classroom import services as classroom
from portal.classroom.models import Course
from portal.config import OIDCProvider, Settings, load_settings
from portal.db import utcnow
from portal.grants.catalogue import ensure_default_calls
from portal.identity.models import FactoryRole, User
from portal.identity.services import grant_role, provision_user
from portal.ledger import services as ledger
from portal.ledger.catalogue import ensure_sites
from portal.ledger.models import Allocation, AllocationSource, Resource, ResourceKind, Site
from portal.market import services as market
from portal.market.models import OfferingState
from portal.migrations import upgrade
from portal.projects import services as projects
from portal.projects.models import Project
from portal.worker import run_worker
from portal_standin.devhub import HubProcess
from portal_standin.devstack import OIDCProviderProcess
from portal_standin.devstripe import StripeStandIn

log = logging.getLogger("portal.demo")


@dataclass(frozen=True)
class DemoPerson:
    #: What this person is in the demo, in the words of a newcomer choosing whom to log in as.
    who: str
    #: Their claims at the provider (``sub`` first).
    claims: dict[str, Any]


@dataclass(frozen=True)
class DemoProvider:
    name: str
    label: str
    offset: int
    min_acr: str
    people: list[DemoPerson]

    @property
    def users(self) -> list[dict[str, Any]]:
        return [p.claims for p in self.people]

    def process(self, provider_port: int, log_path: Path | None = None) -> OIDCProviderProcess:
        """This provider's process (not started), its login page naming the people and what each is."""
        return OIDCProviderProcess(
            port=provider_port + self.offset,
            users=self.users,
            who={p.claims["sub"]: p.who for p in self.people},
            log_path=log_path,
        )


EIDAS = "http://eidas.europa.eu/LoA/"

DEMO_PROVIDERS = [
    DemoProvider(
        "eidas",
        "eIDAS (demo broker)",
        0,
        "low",
        [
            DemoPerson(
                "PI (principal investigator) of 'Polish LLM pre-training' at the University of Warsaw;"
                " teacher of the demo course",
                {
                    "sub": "PL/PL/85010112345",
                    "given_name": "Anna",
                    "family_name": "Kowalska",
                    "email": "anna.kowalska@uw.demo.eu",
                    "email_verified": True,
                    "birthdate": "1985-01-01",
                    "person_identifier": "PL/PL/85010112345",
                    "acr": EIDAS + "substantial",
                    "amr": ["eid"],
                },
            ),
            DemoPerson(
                "Factory admin (operator): sites, calls for proposals, roles, the audit log",
                {
                    "sub": "LV/LV/010180-10000",
                    "given_name": "Admin",
                    "family_name": "Ozola",
                    "email": "admin@factory.demo.eu",
                    "email_verified": True,
                    "person_identifier": "LV/LV/010180-10000",
                    "acr": EIDAS + "high",
                    "amr": ["eid"],
                },
            ),
            DemoPerson(
                "Student: joins the demo course with its join code",
                {
                    "sub": "PL/PL/90020254321",
                    "given_name": "Piotr",
                    "family_name": "Nowak",
                    "email": "piotr.nowak@demo.eu",
                    "email_verified": True,
                    "acr": EIDAS + "low",
                    "amr": ["pwd"],
                },
            ),
        ],
    ),
    DemoProvider(
        "myaccessid",
        "MyAccessID (academic, demo)",
        1,
        "low",
        [
            DemoPerson(
                "Researcher at Vilnius University: PI of 'Lithuanian speech recognition', member of Anna's project",
                {
                    "sub": "jonas@vu.lt",
                    "given_name": "Jonas",
                    "family_name": "Petrauskas",
                    "email": "jonas.petrauskas@vu.demo.lt",
                    "email_verified": True,
                    "voperson_external_affiliation": ["faculty@vu.lt", "member@vu.lt"],
                    "eduperson_entitlement": ["urn:geant:vu.lt:group:ai-lab"],
                    "acr": "https://refeds.org/assurance/IAP/medium",
                },
            ),
        ],
    ),
    DemoProvider(
        "tara",
        "TARA, Estonia (demo)",
        2,
        "substantial",
        [
            DemoPerson(
                "Startup founder (Tallinn Vision OÜ): buys GPU hours in the marketplace",
                {
                    "sub": "EE38001085718",
                    "given_name": "Liis",
                    "family_name": "Tamm",
                    "email": "liis@startup.demo.ee",
                    "email_verified": True,
                    "birthdate": "1980-01-08",
                    "acr": "high",
                    "amr": ["idcard"],
                },
            ),
            DemoPerson(
                "Private person, level of assurance low: shows how TARA refuses a login below its minimum",
                {
                    "sub": "EE49002124277",
                    "given_name": "Kadri",
                    "family_name": "Kask",
                    "email": "kadri@demo.ee",
                    "email_verified": True,
                    "acr": "low",
                    "amr": ["mID"],
                },
            ),
        ],
    ),
]


#: Offsets of the Stripe stand-in's and the JupyterHub's ports from the first provider port.
STRIPE_OFFSET = 20
HUB_OFFSET = 30
DEMO_WEBHOOK_SECRET = "whsec_devstripe"  # noqa: S105  (the local stand-in's, never a real one)


def demo_settings(port: int, provider_port: int) -> Settings:
    providers = [
        OIDCProvider(
            name=p.name,
            label=p.label,
            discovery_url=f"http://127.0.0.1:{provider_port + p.offset}/.well-known/openid-configuration",
            client_id="portal-demo",
            client_secret=os.environ.get(f"PORTAL_OIDC_{p.name.upper()}_CLIENT_SECRET", "demo-secret"),
            min_acr=p.min_acr,
        )
        for p in DEMO_PROVIDERS
    ]
    return load_settings(
        env="development",
        base_url=f"http://127.0.0.1:{port}",
        oidc_providers=providers,
        stripe_api_base=f"http://127.0.0.1:{provider_port + STRIPE_OFFSET}",
        stripe_api_key=StripeStandIn.api_key,
        stripe_webhook_secret=DEMO_WEBHOOK_SECRET,
        hub_url=f"http://127.0.0.1:{provider_port + HUB_OFFSET}",
        hub_oauth_redirect_uri=f"http://127.0.0.1:{provider_port + HUB_OFFSET}/hub/oauth_callback",
        hub_local_gpus=_this_machines_gpus(),
    )


def _this_machines_gpus() -> list[str]:
    """The demo's hub runs servers here: the GPU profiles it offers are those of this machine's GPUs."""
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        listed = subprocess.run([nvidia_smi, "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
        # "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-...)"
        return [line.split(":", 1)[1].split("(UUID")[0].strip() for line in listed.splitlines() if ":" in line]
    return []


def seed_demo_data(db: Session, settings: Settings) -> None:
    """Demo users, organisations and projects; does nothing once they exist."""
    if db.exec(select(User).limit(1)).first() is not None:
        return
    by_name = {p.name: p for p in settings.oidc_providers}

    def person(provider: str, claims: dict[str, Any]) -> User:
        return provision_user(
            db,
            provider=by_name[provider],
            subject=claims["sub"],
            display_name=f"{claims['given_name']} {claims['family_name']}",
            email=claims["email"],
        )

    anna = person("eidas", DEMO_PROVIDERS[0].users[0])
    admin = person("eidas", DEMO_PROVIDERS[0].users[1])
    jonas = person("myaccessid", DEMO_PROVIDERS[1].users[0])
    liis = person("tara", DEMO_PROVIDERS[2].users[0])
    grant_role(db, None, admin, FactoryRole.ADMIN, reason="demo data")

    uw = projects.create_organisation(
        db,
        anna,
        name="Uniwersytet Warszawski",
        kind="university",
        country="PL",
        registry_id="000001258",
        vat_number="PL5252248481",
    )
    vu = projects.create_organisation(
        db, jonas, name="Vilniaus universitetas", kind="university", country="LT", vat_number="LT119511515"
    )
    startup = projects.create_organisation(
        db, liis, name="Tallinn Vision OÜ", kind="sme", country="EE", registry_id="14532901", vat_number="EE100931558"
    )
    llm = projects.create_project(
        db,
        anna,
        uw,
        title="Polish LLM pre-training",
        description="Continued pre-training of a 7B model on Polish text.",
    )
    speech = projects.create_project(
        db,
        jonas,
        vu,
        title="Lithuanian speech recognition",
        description="Fine-tuning Whisper models for Lithuanian dialects.",
    )
    shelf = projects.create_project(
        db, liis, startup, title="Retail shelf vision", description="Object detection for shelf analytics."
    )
    _invitation, link = projects.invite_member(
        db, settings, anna, llm, email="jonas.petrauskas@vu.demo.lt", role="member"
    )
    projects.accept_invitation(db, jonas, link.rsplit("/", 1)[1])
    opened = _seed_compute(db, llm, speech, shelf)
    now = utcnow()
    classroom.create_course(
        db,
        settings,
        anna,
        parent_allocation_id=opened["llm-cpu"].id,
        title="Dask for data science (demo course)",
        starts_at=now,
        ends_at=now + timedelta(days=60),
        student_cap=6 * 3600,
        max_seats=20,
        profiles=["cpu"],
    )
    gpus = db.exec(select(Resource).where(Resource.kind == ResourceKind.GPU).order_by(Resource.id)).all()
    ensure_default_calls(db, admin, list(gpus), reason="demo data")
    projects.verify_organisation(db, admin, startup, reason="demo data")
    for resource in gpus[:4]:
        offering = market.create_offering(
            db,
            None,
            resource=resource,
            title=f"{resource.name}",
            price_cents=290 if resource.gpu_model == "H200" else 210,
            max_quantity=2_000,
            min_quantity=10,
            validity_months=6,
            reason="demo data",
        )
        market.set_offering_state(db, None, offering, OfferingState.PUBLISHED, reason="demo data")


def _seed_compute(db: Session, llm: Project, speech: Project, shelf: Project) -> dict[str, Allocation]:
    """Sites with planned capacity, three allocations and a month of usage, so pages have something to show."""
    today = utcnow().date()
    month_ago = utcnow().replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=30)
    ensure_sites(db, plan_quarters_from=month_ago.date(), quarters=4, reason="demo data")

    def resource(site: str, code: str) -> Resource:
        return db.exec(
            select(Resource).join(Site, Site.id == Resource.site_id).where(Site.code == site, Resource.code == code)
        ).one()

    hour = 3600
    #: (key, project, site, resource, hours, days, source, title)
    planned = [
        ("llm", llm, "waw", "h200", 5_000, 180, AllocationSource.AWARD, "Fast Lane award (H200)"),
        ("speech", speech, "vno", "h200", 800, 90, AllocationSource.AWARD, "Playground (H200)"),
        ("llm-cpu", llm, "waw", "cpu", 200, 180, AllocationSource.AWARD, "CPU for notebooks"),
        ("shelf", shelf, "tll", "h200", 200, 180, AllocationSource.PURCHASE, "Purchased GPU-hours"),
    ]
    opened = {
        key: ledger.open_allocation(
            db,
            None,
            project=project,
            resource=resource(site, code),
            amount=hours * hour,
            starts_at=month_ago,
            ends_at=month_ago + timedelta(days=days),
            source=source,
            title=title,
            idempotency_key=f"demo:{key}",
        )
        for key, project, site, code, hours, days, source, title in planned
    }
    award, purchase = opened["llm"], opened["shelf"]
    charges = [
        ledger.UsageCharge(
            award.id,
            (40 + 7 * (i % 5)) * hour,
            f"demo:llm:{i}",
            "demo job",
            day=today - timedelta(days=29 - i),
        )
        for i in range(30)
    ] + [
        ledger.UsageCharge(
            purchase.id,
            (3 + i % 4) * hour,
            f"demo:shelf:{i}",
            "demo job",
            day=today - timedelta(days=29 - i),
        )
        for i in range(30)
    ]
    ledger.charge_usage_batch(db, charges)
    return opened


def _stop_on_sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # a terminated demo stops its providers, stand-in and hub like Ctrl-C does


def run_demo(*, port: int, provider_port: int) -> None:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    settings = demo_settings(port, provider_port)
    Path(settings.instance_path).mkdir(parents=True, exist_ok=True)
    logs = Path(settings.instance_path) / "logs"
    logs.mkdir(exist_ok=True)
    processes = []
    stop_worker = threading.Event()
    try:
        for p in DEMO_PROVIDERS:
            processes.append(p.process(provider_port, logs / f"oidc-{p.name}.log").start())
        stripe = StripeStandIn(
            port=provider_port + STRIPE_OFFSET, data_dir=Path(settings.instance_path) / "stripe"
        ).start()
        processes.append(stripe)
        stripe.configure_webhook(f"{settings.base_url}/market/stripe/webhook", DEMO_WEBHOOK_SECRET)
        hub = HubProcess(
            Path(settings.instance_path) / "hub",
            port=provider_port + HUB_OFFSET,
            portal_url=settings.base_url,
            portal_api_token=settings.hub_spawn_check_token,
            service_token=settings.hub_api_token,
            env={
                "PORTAL_HUB_OAUTH_CLIENT_ID": settings.hub_oauth_client_id,
                "PORTAL_HUB_OAUTH_CLIENT_SECRET": settings.hub_oauth_client_secret,
            },
            log_path=logs / "jupyterhub.log",
        )
        upgrade(settings.resolved_database_url)
        app = create_app(settings)
        with app.app_context():
            from portal.db import get_db

            seed_demo_data(get_db(), settings)
            join_code = get_db().exec(select(Course.join_code).order_by(Course.id)).first()
        processes.append(hub.start())  # it asks the portal, which answers once it serves (below)
        worker = threading.Thread(
            target=run_worker,
            args=(app.extensions["portal.engine"], settings),
            kwargs={"stop": stop_worker},
            name="portal-worker",
            daemon=True,
        )
        worker.start()
        _print_banner(settings, provider_port, join_code)
        run_simple("127.0.0.1", port, app, threaded=True, use_reloader=False)
    except KeyboardInterrupt:
        pass
    finally:
        stop_worker.set()
        for process in processes:
            process.stop()
        print("demo stopped")


def _print_banner(settings: Settings, provider_port: int, join_code: str | None) -> None:
    lines = [
        "",
        f"Baltic AI Factory portal (demo): {settings.base_url}",
        f"database: {settings.resolved_database_url}",
        "",
        "Log in with one of these demo identities (click the name on the provider's page):",
    ]
    for p in DEMO_PROVIDERS:
        lines.append(f"  {p.label} (http://127.0.0.1:{provider_port + p.offset}, minimum level {p.min_acr}):")
        for person in p.people:
            u = person.claims
            name = f"{u['given_name']} {u['family_name']}"
            lines.append(f"    {name:<17} {person.who}")
            lines.append(f"    {'':<17} subject {u['sub']}, acr {u.get('acr', '')}")
    lines += [
        "",
        "Admin Ozola holds the factory admin role; Kadri Kask (TARA, acr low) shows a refused login.",
        f"Liis Tamm can buy GPU hours for Tallinn Vision OÜ at {settings.base_url}/market; payments go to the",
        f"local Stripe stand-in at {settings.stripe_api_base} (its page has Pay / declined card / Cancel).",
        f"Notebooks: 'Start a notebook' on a project page; JupyterHub runs at {settings.hub_url}, its servers on this"
        f" machine ({', '.join(settings.hub_local_gpus) or 'no GPU: GPU profiles are shown as unavailable'}).",
        f"Courses: Anna Kowalska teaches 'Dask for data science'; a student (Piotr Nowak, say) joins at "
        f"{settings.base_url}/courses/join?code={join_code} and launches a CPU notebook from the course page."
        if join_code
        else "",
        "The worker's jobs (metering notebooks every minute, notices, the end of term) run in the same process.",
        "Ctrl-C stops the portal and the providers.",
        "",
    ]
    print("\n".join(lines), flush=True)
