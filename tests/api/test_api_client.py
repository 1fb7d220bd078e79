"""A real client proves the API: a Python client generated from ``/api/v1/openapi.json`` by a maintained generator
(openapi-python-client) drives the portal served over HTTP through a whole scenario. An operator sets up a site,
a resource, its capacity and an allocation; a PI, with a token made on the account page after an eIDAS login,
applies to a call, reads the balance and its entries, and (with a real JupyterHub) launches and stops a notebook;
finance lists the invoice of a paid order. Every answer the client gets is checked against the document: the
status is documented for the operation, and so is the content type."""

from __future__ import annotations

import functools
import importlib
import json
import pkgutil
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import requests
from flask import Flask
from openapi_spec_validator import validate
from portal_standin.devstack import free_port, patience
from sqlmodel import Session, col, select
from werkzeug.serving import make_server

from portal import create_app
from portal.config import Settings, load_settings
from portal.grants.models import ReviewMode
from portal.identity.models import ApiToken, FactoryRole, User
from portal.identity.services import create_api_token, grant_role
from portal.ledger.models import Resource
from portal.market import services as market
from portal.market.stripe_gateway import StripeGateway
from portal.projects import services as projects
from portal.projects.models import Organisation, Project
from tests.conftest import EIDAS, post_form
from tests.factories import login_of, make_call, publish_offering
from tests.ledger_world import HOUR, admin, person
from tests.market.test_market import WEBHOOK_SECRET, _completed, _signed

OPENAPI_PYTHON_CLIENT = str(Path(sys.executable).parent / "openapi-python-client")
PACKAGE = "portal_api_client"
#: No formatter run over the output (nothing reads it but the tests); PDFs read as bytes: the generator turns only
#: ``application/octet-stream`` into a file.
GENERATOR_CONFIG = "post_hooks: []\ncontent_type_overrides:\n  application/pdf: application/octet-stream\n"
REASON = "Setting up the Tallinn cluster"


# --- the document and the generated client ------------------------------------------------------------------


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory, migrated_sqlite: Path) -> dict[str, Any]:
    """The OpenAPI document as the portal serves it."""
    folder = tmp_path_factory.mktemp("openapi")
    shutil.copy(migrated_sqlite, folder / "portal.db")
    settings = load_settings(
        env="test",
        instance_path=folder / "instance",
        database_url=f"sqlite:///{folder / 'portal.db'}",
        secret_key="test-secret-key",
        base_url="http://127.0.0.1:5000",
    )
    app = create_app(settings)
    try:
        response = app.test_client().get("/api/v1/openapi.json")
    finally:
        app.extensions["portal.engine"].dispose()
    assert response.status_code == 200 and response.mimetype == "application/json"
    return response.json


@dataclass
class Generated:
    """The generated client package: its operations by operationId (module name), its models, and the document."""

    package: ModuleType
    operations: dict[str, ModuleType]
    models: ModuleType
    document: dict[str, Any]

    def body(self, model: str, **fields: Any) -> Any:
        return getattr(self.models, model).from_dict(fields)


@pytest.fixture(scope="module")
def generated(document: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Generated]:
    folder = tmp_path_factory.mktemp("client")
    (folder / "openapi.json").write_text(json.dumps(document))
    (folder / "config.yaml").write_text(GENERATOR_CONFIG)
    run = subprocess.run(
        [
            OPENAPI_PYTHON_CLIENT,
            "generate",
            "--path",
            str(folder / "openapi.json"),
            "--output-path",
            str(folder / PACKAGE),
            "--meta",
            "none",
            "--config",
            str(folder / "config.yaml"),
            "--fail-on-warning",  # a schema or response it could not turn into code fails here
        ],
        capture_output=True,
        text=True,
        timeout=patience(180),
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    sys.path.insert(0, str(folder))
    try:
        package = importlib.import_module(PACKAGE)
        api = importlib.import_module(f"{PACKAGE}.api")
        operations = {
            info.name.rsplit(".", 1)[1]: importlib.import_module(info.name)
            for info in pkgutil.walk_packages(api.__path__, f"{PACKAGE}.api.")
            if not info.ispkg
        }
        yield Generated(package, operations, importlib.import_module(f"{PACKAGE}.models"), document)
    finally:
        sys.path.remove(str(folder))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def operation_at(document: dict[str, Any], method: str, path: str) -> tuple[str, dict[str, Any]] | None:
    """The documented operation (its path template, and itself) that answers ``method`` on ``path``."""
    found = [
        (template, operations[method])
        for template, operations in document["paths"].items()
        if method in operations and re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path)
    ]
    return min(found, key=lambda f: f[0].count("{"), default=None)


@dataclass
class Observed:
    """Each answer the generated clients got: (method, path, status, content type), from an httpx event hook."""

    document: dict[str, Any]
    seen: list[tuple[str, str, int, str | None]] = field(default_factory=list)

    def record(self, response: httpx.Response) -> None:
        media = response.headers.get("content-type")
        self.seen.append(
            (
                response.request.method.lower(),
                response.request.url.path,
                response.status_code,
                media and media.split(";")[0],
            )
        )

    def operations(self) -> set[str]:
        return {
            found[1].get("operationId", "")
            for method, path, _status, _media in self.seen
            if (found := operation_at(self.document, method, path))
        }

    def undocumented(self) -> list[str]:
        """What the portal answered that its document does not say it may."""
        problems = []
        for method, path, status, media in self.seen:
            found = operation_at(self.document, method, path)
            if found is None:
                problems.append(f"{method} {path}: no such operation")
                continue
            template, operation = found
            response = operation["responses"].get(str(status))
            if response is None:
                problems.append(f"{method} {template}: {status} is not documented")
            elif media is not None and media not in response.get("content", {}):
                problems.append(f"{method} {template}: {status} {media} is not documented")
            elif media is None and response.get("content"):
                problems.append(f"{method} {template}: {status} came without the documented content")
        return problems


@dataclass
class Caller:
    """One person's generated client: each call names the status it expects and gives the parsed answer."""

    api: Generated
    client: Any  # the generated AuthenticatedClient

    def __call__(self, operation: str, status: int, **arguments: Any) -> Any:
        response = self.api.operations[operation].sync_detailed(client=self.client, **arguments)
        assert response.status_code == status, (operation, response.status_code, response.content[:500])
        return response.parsed


def caller(api: Generated, observed: Observed, base_url: str, token: str) -> Caller:
    client = api.package.AuthenticatedClient(
        base_url=base_url,
        token=token,
        raise_on_unexpected_status=True,  # a status the document does not list raises in the client too
        httpx_args={"event_hooks": {"response": [observed.record]}},
    )
    return Caller(api, client)


@contextmanager
def served(app: Flask) -> Iterator[str]:
    """``app`` served over HTTP on a free port of 127.0.0.1 in a thread; yields its URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)
        server.server_close()


# --- the document -----------------------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_and_the_generator_makes_every_operation(
    document: dict[str, Any], generated: Generated
) -> None:
    assert document["openapi"].startswith("3.")
    validate(document)  # openapi-spec-validator, against the schema of the document's 3.x version

    operations = [op for path in document["paths"].values() for op in path.values()]
    named = {op["operationId"] for op in operations}
    assert len(named) == len(operations), "every operation has an operationId of its own"
    assert named <= generated.operations.keys(), named - generated.operations.keys()
    assert len(generated.operations) == len(operations)
    titles = [schema.get("title") for schema in document["components"]["schemas"].values()]
    assert len(titles) == len(set(titles)), "a generator makes one class per title"

    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            statuses = set(operation["responses"])
            query = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
            assert "401" in statuses, (method, path)  # every operation takes a token
            if query or "requestBody" in operation:
                assert "422" in statuses, (method, path)
            if "cursor" in query:
                assert "400" in statuses, (method, path)  # a cursor that was not handed out


# --- the scenario, step by step ---------------------------------------------------------------------------


@dataclass
class Scenario:
    api: Generated
    observed: Observed
    base_url: str
    app: Flask
    db: Session

    def as_token(self, token: str) -> Caller:
        return caller(self.api, self.observed, self.base_url, token)

    def as_user(self, user: User, *scopes: str) -> Caller:
        _row, plain = create_api_token(self.db, user, name="script", scopes=list(scopes), ttl_days=5)
        return self.as_token(plain)


def token_from_the_account_page(app: Flask, login: Callable[..., User], sub: str, level: str) -> tuple[User, str]:
    """Log ``sub`` in through the real OIDC provider at eIDAS ``level`` and make a read-write token on the account
    page, as a person does; the user and the token shown once."""
    browser = app.test_client()
    user = login(browser, sub, acr=EIDAS + level, given_name="Pille", family_name="Pi")
    page = post_form(browser, "/account/tokens", {"name": "laptop", "scopes": ["read", "write"], "ttl_days": "30"})
    assert page.status_code == 200, page.get_data(as_text=True)
    shown = re.search(r'<code id="new-token">([^<]+)</code>', page.get_data(as_text=True))
    assert shown, "the new token is not shown"
    return user, shown.group(1)


def pi_sets_up_a_project(s: Scenario, pi: Caller) -> tuple[int, int]:
    organisation = pi(
        "create_organisation",
        201,
        body=s.api.body("OrganisationIn", name="Tallinn Tech", kind="university", country="EE"),
    )
    project = pi(
        "create_project",
        201,
        organisation_id=organisation.id,
        body=s.api.body("ProjectIn", title="Estonian speech", description="ASR for Estonian"),
    )
    assert project.organisation_id == organisation.id and project.archived is False
    return organisation.id, project.id


def operator_sets_up_the_site(s: Scenario, operator: Caller, project_id: int) -> tuple[int, int]:
    """A site, its CPU resource with capacity from yesterday for 120 days, and 20 core-hours for the project."""
    site = operator(
        "create_site",
        201,
        body=s.api.body("SiteIn", code="tll", name="Tallinn", city="Tallinn", country="EE", reason=REASON),
    )
    assert (site.code, site.country) == ("tll", "EE")
    resource = operator(
        "create_resource",
        201,
        site_id=site.id,
        body=s.api.body("ResourceIn", code="cpu", name="CPU core-hours", kind="cpu", reason=REASON),
    )
    assert resource.site_id == site.id and resource.base_unit == "core-second"
    today = date.today()
    period = operator(
        "set_capacity",
        200,
        resource_id=resource.id,
        body=s.api.body(
            "CapacityIn",
            starts_on=(today - timedelta(days=1)).isoformat(),
            ends_on=(today + timedelta(days=120)).isoformat(),
            capacity=10_000 * HOUR,
            reason=REASON,
        ),
    )
    assert (period.capacity, period.reserved) == (10_000 * HOUR, 0)
    now = datetime.now(UTC)
    allocation = operator(
        "open_allocation",
        201,
        body=s.api.body(
            "AllocationIn",
            project_id=project_id,
            resource_id=resource.id,
            amount=20 * HOUR,
            starts_at=(now - timedelta(hours=1)).isoformat(),
            ends_at=(now + timedelta(days=60)).isoformat(),
            title="Pilot",
            reason=REASON,
        ),
    )
    assert (allocation.balance, allocation.used, allocation.source.value) == (20 * HOUR, 0, "admin")
    capacity = operator("get_capacity", 200, resource_id=resource.id)
    assert [(p.capacity, p.reserved) for p in capacity.periods] == [(10_000 * HOUR, 20 * HOUR)]
    sites = operator("list_sites", 200)
    assert [x.code for x in sites.sites] == ["tll"]
    return resource.id, allocation.id


def pi_reads_the_balance(pi: Caller, project_id: int, allocation_id: int) -> None:
    listed = pi("list_allocations", 200, project_id=project_id)
    assert [a.id for a in listed.allocations] == [allocation_id] and listed.next_cursor is None
    detail = pi("get_allocation", 200, allocation_id=allocation_id)
    assert (detail.balance, detail.used, detail.remaining) == (20 * HOUR, 0, 20 * HOUR)
    assert detail.resource.base_unit == "core-second"
    entries = pi("list_allocation_entries", 200, allocation_id=allocation_id)
    assert [(e.kind.value, e.amount, e.balance_after) for e in entries.entries] == [
        ("adjustment", 20 * HOUR, 20 * HOUR)
    ]


def pi_applies_to_a_call(s: Scenario, pi: Caller, project_id: int, resource_id: int) -> None:
    """The call decides at once (automatic review): the award is an allocation the PI then reads."""
    call = make_call(s.db, resource_id, person(s.db, "Manager"), mode=ReviewMode.AUTOMATIC, countries=["EE"])
    assert call.id in {c.id for c in pi("list_calls", 200).calls}
    draft = pi(
        "create_application", 201, body=s.api.body("ApplicationIn", call_id=call.id, project_id=project_id, title="ASR")
    )
    assert draft.state.value == "draft"
    saved = pi(
        "update_application",
        200,
        application_id=draft.id,
        body=s.api.body(
            "ApplicationUpdateIn",
            abstract="Train ASR models.",
            answers={"software": "PyTorch", "nodes": "8"},
            requests=[{"resource_id": resource_id, "amount": 100 * HOUR, "justification": "3 models"}],
        ),
    )
    assert saved.requests[0].requested == 100 * HOUR
    decided = pi("submit_application", 200, application_id=draft.id, body=s.api.body("SubmitApplicationIn"))
    assert decided.state.value == "accepted" and decided.awards[0].amount == 100 * HOUR
    awarded = pi("get_allocation", 200, allocation_id=decided.awards[0].allocation_id)
    assert awarded.credited == 100 * HOUR and awarded.project_id == project_id


def finance_lists_the_invoice(
    s: Scenario, settings: Settings, pi_user: User, project_id: int, resource_id: int, staff: User
) -> None:
    """The PI buys core-hours for the (verified) organisation and Stripe's webhook reports it paid; finance reads
    the invoice and its PDF."""
    db = s.db
    project = db.get(Project, project_id)
    organisation = db.get(Organisation, project.organisation_id)
    projects.verify_organisation(db, staff, organisation, reason="test setup")
    offering = publish_offering(db, db.get(Resource, resource_id), title="CPU hours", price_cents=10)
    order, _pay_here = market.place_order(
        db,
        settings,
        StripeGateway(settings),
        pi_user,
        login_of(pi_user),
        offering=offering,
        project=project,
        quantity=40,
    )
    payload, signature = _signed(
        _completed(order.id, order.checkout_session_id, f"evt_client_{order.id}", order.gross_cents)
    )
    paid = requests.post(
        f"{s.base_url}/market/stripe/webhook",
        data=payload,
        headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
        timeout=patience(10),
    )
    assert paid.status_code == 200 and paid.json()["outcome"] == "fulfilled", paid.text

    finance_user = person(db, "Finance")
    grant_role(db, None, finance_user, FactoryRole.FINANCE, reason="test setup")
    finance = s.as_user(finance_user, "read")
    invoices = finance("list_invoices", 200, organisation_id=organisation.id)
    assert [(i.order_id, i.net_cents, i.gross_cents, i.currency) for i in invoices.invoices] == [
        (order.id, 400, order.gross_cents, "EUR")
    ]
    assert order.gross_cents == 400 + order.vat_cents
    pdf = finance("get_invoice_pdf", 200, invoice_id=invoices.invoices[0].id)
    assert pdf.payload.read().startswith(b"%PDF")
    orders = s.as_user(pi_user, "read")("list_orders", 200, organisation_id=organisation.id)
    assert [(o.id, o.state.value) for o in orders.orders] == [(order.id, "paid")]


# --- the scenario without a hub ----------------------------------------------------------------------------


@pytest.fixture
def shop_settings(make_settings, stand_in) -> Callable[..., Settings]:
    """``make_settings`` with the Stripe stand-in, so that orders open Checkout Sessions there."""
    return functools.partial(
        make_settings,
        stripe_api_base=stand_in.url,
        stripe_api_key=stand_in.api_key,
        stripe_webhook_secret=WEBHOOK_SECRET,
    )


def test_operator_pi_and_finance_drive_the_portal_through_the_generated_client(
    generated: Generated, shop_settings: Callable[..., Settings], login: Callable[..., User]
) -> None:
    settings = shop_settings()
    app = create_app(settings)
    try:
        with served(app) as base_url, Session(app.extensions["portal.engine"], expire_on_commit=False) as db:
            s = Scenario(generated, Observed(generated.document), base_url, app, db)
            staff = admin(db)
            operator = s.as_user(staff, "operate")
            pi_user, plain = token_from_the_account_page(app, login, "pille-pi", "substantial")
            pi = s.as_token(plain)

            _organisation_id, project_id = pi_sets_up_a_project(s, pi)
            resource_id, allocation_id = operator_sets_up_the_site(s, operator, project_id)
            pi_reads_the_balance(pi, project_id, allocation_id)
            pi_applies_to_a_call(s, pi, project_id, resource_id)
            finance_lists_the_invoice(s, settings, pi_user, project_id, resource_id, staff)

            assert s.observed.undocumented() == []
            assert {
                "create_site",
                "open_allocation",
                "get_allocation",
                "submit_application",
                "list_invoices",
                "get_invoice_pdf",
            } <= s.observed.operations()
    finally:
        app.extensions["portal.engine"].dispose()


def test_a_token_applies_with_the_level_of_assurance_of_the_login_that_made_it(
    generated: Generated, make_settings: Callable[..., Settings], login: Callable[..., User]
) -> None:
    app = create_app(make_settings())
    try:
        with served(app) as base_url, Session(app.extensions["portal.engine"], expire_on_commit=False) as db:
            s = Scenario(generated, Observed(generated.document), base_url, app, db)
            _user, substantial = token_from_the_account_page(app, login, "mart-pi", "substantial")
            _same_user, low = token_from_the_account_page(app, login, "mart-pi", "low")
            made = db.exec(select(ApiToken).order_by(col(ApiToken.id))).all()
            assert [(t.login_provider, t.login_level) for t in made] == [("eidas", "substantial"), ("eidas", "low")]

            pi = s.as_token(substantial)
            _organisation_id, project_id = pi_sets_up_a_project(s, pi)
            resource_id, _allocation_id = operator_sets_up_the_site(s, s.as_user(admin(db), "operate"), project_id)
            call = make_call(db, resource_id, person(db, "Manager"), mode=ReviewMode.AUTOMATIC, countries=["EE"])
            body = s.api.body("ApplicationIn", call_id=call.id, project_id=project_id, title="ASR")

            refused = s.as_token(low)("create_application", 409, body=body)
            assert refused.type_.endswith("not-eligible") and "level low" in refused.detail
            assert pi("create_application", 201, body=body).state.value == "draft"
            assert s.observed.undocumented() == []
    finally:
        app.extensions["portal.engine"].dispose()


# --- the whole scenario with a real JupyterHub --------------------------------------------------------------


@pytest.mark.hub
def test_the_whole_scenario_with_a_notebook_launched_and_stopped_at_a_real_hub(
    generated: Generated, shop_settings: Callable[..., Settings], login: Callable[..., User], tmp_path: Path
) -> None:
    pytest.importorskip("jupyterhub", reason="needs the [hub] extra")
    from tests.compute import test_notebooks as notebooks
    from tests.compute.test_hub import wait_for

    settings = notebooks.hub_settings(shop_settings, free_port())
    with (
        notebooks.running_stack(settings, tmp_path / "hub") as stack,
        Session(stack.app.extensions["portal.engine"], expire_on_commit=False) as db,
    ):
        s = Scenario(generated, Observed(generated.document), stack.portal_url, stack.app, db)
        staff = admin(db)
        operator = s.as_user(staff, "operate")
        pi_user, plain = token_from_the_account_page(stack.app, login, "pille-pi", "substantial")
        pi = s.as_token(plain)

        _organisation_id, project_id = pi_sets_up_a_project(s, pi)
        resource_id, allocation_id = operator_sets_up_the_site(s, operator, project_id)
        pi_reads_the_balance(pi, project_id, allocation_id)

        launched = pi(
            "launch_notebook",
            201,
            body=s.api.body("LaunchNotebookIn", allocation_id=allocation_id, profile="cpu", hours=1),
        )
        assert launched.state.value in ("starting", "ready") and launched.max_seconds == HOUR
        wait_for(
            lambda: pi("get_notebook", 200, session_id=launched.id).state.value == "ready",
            timeout=60,
            what="a ready server",
        )
        running = pi("list_notebooks", 200, running=True)
        assert [n.id for n in running.notebooks] == [launched.id]
        stopped = pi("stop_notebook", 200, session_id=launched.id, body=s.api.body("StopNotebookIn"))
        assert stopped.state.value == "stopped" and stopped.stop_reason == "stopped by user"
        assert pi("list_notebooks", 200, running=True).notebooks == []
        cores = settings.notebook_profile("cpu").cpus
        after = pi("get_allocation", 200, allocation_id=allocation_id)
        assert after.used == stopped.charged_seconds * cores and after.balance == 20 * HOUR - after.used

        finance_lists_the_invoice(s, settings, pi_user, project_id, resource_id, staff)
        assert s.observed.undocumented() == []
        assert {"launch_notebook", "get_notebook", "stop_notebook", "list_invoices"} <= s.observed.operations()
