"""Time to science (issue 13): each kind of user's first result, in a real browser, with its clicks counted.

A journey starts where the user starts (the home page, a course's join link) and ends where they can work (a
running notebook in JupyterLab). Every click counts, a dropdown choice and a key press included; typing does
not. Each journey asserts its click budget, so that it cannot silently grow, and that each step's page shows
the way on: a link or a button to the next step.

- startup: log in -> buy H100 hours -> pay -> invoice -> notebook -> a Dask result in JupyterLab, at most 12
  clicks;
- student: the course's join link -> log in -> "Join and start a notebook" -> a Dask result in JupyterLab, at
  most 5 clicks and 60 seconds;
- academic: log in -> the Playground call -> an application -> usable hours on the project page, at most 12
  clicks (what it took when issue 13 was filed: keep it).

The portal is served over HTTP with the Stripe stand-in (tests/market/test_browser_market.py's) and a real JupyterHub
(tests/compute/test_notebooks.py's). This machine has no GPU: for the startup's H100 hours the hub finds an
``nvidia-smi`` on its PATH that names one H100, as the factory's GPU node's would, and the portal's settings
say the same (``hub_local_gpus``), so the portal lets the notebook start (it then runs on the CPU). Nothing
else stands in.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlmodel import select

pytest.importorskip("jupyterhub", reason="needs the [hub] extra")

from portal_standin.devhub import REPO
from portal_standin.devstack import free_port

from portal import create_app
from portal.classroom import services as classroom
from portal.db import utcnow
from portal.grants.catalogue import ensure_default_calls
from portal.identity.models import FactoryRole, User
from portal.identity.services import grant_role
from portal.ledger import services as ledger
from portal.market.models import Invoice, Order
from portal.projects import services as projects
from tests.compute.test_notebooks import hub_settings, served, start_hub
from tests.conftest import need_proxy
from tests.factories import cpu_project
from tests.grants.test_browser_grants import portal as grants_portal
from tests.journeys import test_browser as harness
from tests.journeys.test_browser import EIDAS, add_person, assert_accessible, log_in_at_provider, portal_errors
from tests.ledger_world import HOUR, make_world, publish_offering
from tests.market.test_browser_market import WEBHOOK_SECRET, stripe_stand_in

pytestmark = [pytest.mark.browser, pytest.mark.hub]

browser = harness.browser
new_page = harness.new_page

#: Fixtures used here by name.
__all__ = ["browser", "grants_portal", "new_page", "stripe_stand_in"]

#: Starting a server and loading JupyterLab take seconds each on a small machine.
SLOW_MS = 60_000

#: What the hub's ``nvidia-smi`` says it has, and the portal's settings say with it (hub_local_gpus).
FAKE_GPU = "NVIDIA H100 80GB HBM3"

STARTUP_BUDGET = 12
STUDENT_BUDGET = 5
STUDENT_SECONDS = 60


# --- counting clicks -----------------------------------------------------------------------------------


@dataclass
class Clicks:
    """Every click, dropdown choice, check and key press made through Playwright while counting."""

    steps: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.steps)


@pytest.fixture
def clicks(monkeypatch: pytest.MonkeyPatch) -> Clicks:
    from playwright.sync_api import Keyboard, Locator, Page

    counted = Clicks()

    def counting(cls: type, name: str) -> None:
        original: Callable[..., Any] = getattr(cls, name)

        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            what = args[0] if args and isinstance(args[0], str) else ""
            counted.steps.append(f"{name} {what} {self}".strip())
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, wrapper)

    for cls in (Locator, Page):
        for name in ("click", "dblclick", "tap", "select_option", "check", "uncheck", "set_checked", "press"):
            counting(cls, name)
    counting(Keyboard, "press")  # Shift+Enter in the notebook
    return counted


def next_step(page: Any, name: str | re.Pattern[str], *, role: str = "link") -> Any:
    """The page's way on: a visible link (or button) called ``name``, which the journey takes next."""
    way_on = page.get_by_role(role, name=name)
    way_on.first.wait_for(state="visible")
    return way_on.first


# --- the servers ---------------------------------------------------------------------------------------


@pytest.fixture
def fake_gpu_path(tmp_path: Path) -> str:
    """A PATH for the hub whose ``nvidia-smi`` names one H100 (see the module's docstring)."""
    bin_dir = tmp_path / "gpu-bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho '{FAKE_GPU}'\n")
    smi.chmod(0o755)
    node_bin = REPO / "node_modules" / ".bin"
    return os.pathsep.join([str(bin_dir), str(node_bin), str(Path(sys.executable).parent), os.environ["PATH"]])


@pytest.fixture
def factory(make_settings, stripe_stand_in, db, tmp_path: Path, fake_gpu_path: str) -> Iterator[SimpleNamespace]:
    """The portal (paying through the Stripe stand-in) and a real hub against it; an H100 offering on sale with
    capacity for the coming year."""
    need_proxy()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = hub_settings(
        lambda **o: make_settings(
            base_url=url,
            stripe_api_base=stripe_stand_in.url,
            stripe_api_key=stripe_stand_in.api_key,
            stripe_webhook_secret=WEBHOOK_SECRET,
            hub_local_gpus=[FAKE_GPU],
            **o,
        ),
        free_port(),
    )
    app = create_app(settings)
    with served(app, port=port) as portal_url:
        stripe_stand_in.configure_webhook(f"{portal_url}/market/stripe/webhook", WEBHOOK_SECRET)
        world = make_world(db)
        start = date.today()
        for _ in range(4):
            q_start, q_end = ledger.quarter_of(start)
            ledger.set_capacity(
                db, None, world.gpu, starts_on=q_start, ends_on=q_end, capacity=1000 * HOUR, reason="test setup"
            )
            start = q_end
        offering = publish_offering(db, world.gpu)
        hub = start_hub(settings, portal_url, tmp_path / "hub", PATH=fake_gpu_path)
        try:
            yield SimpleNamespace(url=portal_url, app=app, settings=settings, hub=hub, offering=offering)
        finally:
            hub.stop()
            app.extensions["portal.engine"].dispose()


def wait_for_jupyterlab(page: Any, factory: SimpleNamespace) -> None:
    page.wait_for_url(f"{factory.hub.url}/user/**/lab**", timeout=SLOW_MS)
    page.locator("#jp-main-dock-panel").wait_for(timeout=SLOW_MS)
    assert "JupyterLab" in page.title()


def a_dask_result_with_shift_enter(page: Any) -> None:
    """The first start opens on the first notebook (hub_config/first_notebook.py); its first cell runs on the
    kernel's Dask cluster with Shift+Enter, once the kernel is there (the status bar says Idle)."""
    notebook = page.locator(".jp-NotebookPanel", has=page.get_by_text("First steps on the Baltic AI Factory"))
    notebook.wait_for(timeout=SLOW_MS)
    page.locator(".jp-StatusBar-Widget").get_by_text(re.compile(r"Dask GPU\) \| Idle")).wait_for(timeout=SLOW_MS)
    page.keyboard.press("Shift+Enter")
    output = notebook.locator(".jp-CodeCell").first.locator(".jp-OutputArea-output")
    output.get_by_text(re.compile(r"Dask result: the mean of 16,000,000 random numbers is 0\.5000")).wait_for(
        timeout=SLOW_MS
    )


# --- the journeys --------------------------------------------------------------------------------------


def test_a_startup_buys_h100_hours_and_works_in_a_notebook_within_12_clicks(
    factory, stripe_stand_in, oidc_provider, new_page, db, login, clicks: Clicks
) -> None:
    sub, email = add_person(oidc_provider, "Mārtiņš", "Jaunzems", acr=EIDAS + "substantial", amr=["eid"])
    page = new_page()
    errors = portal_errors(page, factory.url)
    # Registering and verifying the company have their own browser tests: here it is verified, with a project.
    page.goto(f"{factory.url}/")
    next_step(page, "Log in").click()
    next_step(page, "eIDAS").click()
    log_in_at_provider(page, oidc_provider, sub)
    page.wait_for_url(f"{factory.url}/")
    buyer = db.exec(select(User).where(User.email == email)).one()
    org = projects.create_organisation(db, buyer, name="Rīgas Redze SIA", kind="sme", country="LV")
    admin = login(factory.app.test_client())
    grant_role(db, None, admin, FactoryRole.ADMIN, reason="test setup")
    projects.verify_organisation(db, admin, org, reason="test setup")
    project = projects.create_project(db, buyer, org, title="Shelf vision for retail")

    # The dashboard leads to the market; the market's row to the order form.
    page.reload()
    next_step(page, "Buy hours").click()
    page.wait_for_url(f"{factory.url}/market")
    next_step(page.get_by_role("row", name=re.compile("H100 hours")), "Order").click()
    page.wait_for_url(re.compile(r".*/market/offerings/\d+/order$"))

    # The order form: the only project is chosen; the price with VAT is shown before payment.
    assert page.get_by_label("For the project").input_value() == str(project.id)
    page.get_by_label("Hours").fill("10")
    page.locator("#quote-total").get_by_text("€30.25").wait_for()  # 25.00 EUR + 21 % Latvian VAT
    next_step(page, "Continue to payment", role="button").click()

    # The stand-in's hosted payment page, then the order turns paid by itself.
    page.wait_for_url(f"{stripe_stand_in.url}/pay/**")
    next_step(page, "Pay", role="button").click()
    placed = db.exec(select(Order).where(Order.project_id == project.id)).one()
    page.wait_for_url(f"{factory.url}/market/orders/{placed.id}")
    page.locator("#order-state").get_by_text("paid", exact=True).wait_for(timeout=20_000)
    assert page.get_by_role("button", name="Cancel the order").count() == 0
    assert_accessible(page, "paid order")

    # The invoice is one click away, and so is a notebook on the hours.
    invoice = db.exec(select(Invoice).where(Invoice.order_id == placed.id)).one()
    with page.expect_download() as download:
        next_step(page, f"Download invoice {invoice.reference}").click()
    assert download.value.suggested_filename == f"{invoice.reference}.pdf"
    next_step(page, "Start a notebook on these hours").click()
    page.wait_for_url(re.compile(rf".*/projects/{project.id}/notebooks\?allocation_id=\d+$"))

    # The form has the order's hours and an H100 profile chosen: Launch is the one thing to do.
    db.expire_all()
    allocation_id = db.get(Order, placed.id).allocation_id
    assert page.get_by_label("Allocation").input_value() == str(allocation_id)
    assert page.get_by_label("Profile").input_value() == "1x-h100"
    assert_accessible(page, "launch form")
    next_step(page, "Launch", role="button").click(timeout=SLOW_MS)

    # The session page follows the start and offers the notebook when it is ready.
    page.wait_for_url(re.compile(rf"{re.escape(factory.url)}/notebooks/\d+$"))
    assert "Request accepted" in page.locator("#session-state").inner_text()
    open_link = page.get_by_role("link", name="Open the notebook")
    open_link.wait_for(timeout=SLOW_MS)
    assert_accessible(page, "session page, ready")
    open_link.click()
    wait_for_jupyterlab(page, factory)
    a_dask_result_with_shift_enter(page)

    assert clicks.count <= STARTUP_BUDGET, "\n".join(clicks.steps)
    assert errors == []


def test_a_student_follows_the_join_link_and_works_in_a_notebook_within_5_clicks_and_a_minute(
    factory, oidc_provider, new_page, db, login, clicks: Clicks
) -> None:
    # The teacher's course (creating one has its own browser test, tests/classroom/test_browser_classroom.py).
    teacher = login(factory.app.test_client(), given_name="Tiina")
    _world, _project, allocation = cpu_project(
        db, teacher, hours=100, title="Teaching Dask", organisation="Tartu Ülikool", country="EE"
    )
    now = utcnow()
    course = classroom.create_course(
        db,
        factory.settings,
        teacher,
        parent_allocation_id=allocation.id,
        title="Parallel Python",
        starts_at=now - timedelta(hours=1),
        ends_at=now + timedelta(days=14),
        student_cap=4 * HOUR,
        max_seats=10,
        profiles=["cpu"],
    )
    join_link = f"{factory.url}/courses/join?code={course.join_code}"

    student_sub, _student_email = add_person(oidc_provider, "Sten", "Tudeng", acr=EIDAS + "low")
    page = new_page()
    errors = portal_errors(page, factory.url)
    started = time.monotonic()
    page.goto(join_link)  # from the teacher's e-mail or the course's web page

    # The login page (the join page needs a login) and the provider's page.
    page.wait_for_url(re.compile(rf"{re.escape(factory.url)}/login\?next=.*"))
    next_step(page, "eIDAS").click()
    log_in_at_provider(page, oidc_provider, student_sub)

    # Back on the join page, the code filled in: join and start in one.
    page.wait_for_url(re.compile(rf"{re.escape(factory.url)}/courses/join\?code={course.join_code}$"))
    assert page.get_by_label("Join code").input_value() == course.join_code
    assert_accessible(page, "join page")
    next_step(page, "Join and start a notebook", role="button").click()

    page.wait_for_url(re.compile(rf"{re.escape(factory.url)}/notebooks/\d+$"))
    assert "You joined the course." in page.locator(".flashes").inner_text()
    open_link = page.get_by_role("link", name="Open the notebook")
    open_link.wait_for(timeout=SLOW_MS)
    assert_accessible(page, "student's session page, ready")
    open_link.click()
    wait_for_jupyterlab(page, factory)
    a_dask_result_with_shift_enter(page)
    seconds = time.monotonic() - started

    # The hub's own pages lead back to the portal.
    page.goto(f"{factory.hub.url}/hub/home")
    back = page.get_by_role("link", name="Back to the portal")
    assert back.get_attribute("href") == f"{factory.url}/notebooks"

    assert clicks.count <= STUDENT_BUDGET, "\n".join(clicks.steps)
    assert seconds <= STUDENT_SECONDS, f"the student's journey took {seconds:.0f} s"
    assert errors == []


ACADEMIC_BUDGET = 12


def test_an_academic_gets_usable_playground_hours_within_12_clicks(
    grants_portal, oidc_provider, new_page, login, clicks: Clicks
) -> None:
    db, url = grants_portal.db, grants_portal.url
    # The standing calls and a university's project (registering one has its own browser test).
    world = make_world(db)
    start = date.today()
    for _ in range(3):
        q_start, q_end = ledger.quarter_of(start)
        ledger.set_capacity(
            db, None, world.gpu, starts_on=q_start, ends_on=q_end, capacity=100_000 * HOUR, reason="test setup"
        )
        start = q_end
    manager = login(grants_portal.app.test_client(), given_name="Mona")
    ensure_default_calls(db, manager, [world.gpu], reason="test setup")
    sub, email = add_person(oidc_provider, "Anna", "Tamm", acr=EIDAS + "substantial")
    page = new_page()
    errors = portal_errors(page, url)
    page.goto(f"{url}/")
    next_step(page, "Log in").click()
    next_step(page, "eIDAS").click()
    log_in_at_provider(page, oidc_provider, sub)
    page.wait_for_url(f"{url}/")
    pi = db.exec(select(User).where(User.email == email)).one()
    org = projects.create_organisation(db, pi, name="Tartu Ülikool", kind="university", country="EE")
    project = projects.create_project(db, pi, org, title="Estonian speech models")
    page.reload()

    # The calls, the Playground call, a draft for the project.
    next_step(page, "Calls").click()
    next_step(page, "Playground").click()
    project_choice = page.get_by_label("Project")
    if project_choice.input_value() != str(project.id):
        project_choice.select_option(str(project.id))
    page.get_by_label("Title of the application").fill("Whisper for Estonian")
    next_step(page, "Start an application", role="button").click()
    page.wait_for_url(re.compile(r".*/applications/\d+/edit$"))

    # The draft: what she will try, the hours, and submit: the Playground decides at once.
    page.get_by_label("Abstract").fill("Speech recognition for Estonian, fine-tuned on public broadcasts.")
    page.get_by_label("What will you try?").fill("Fine-tuning Whisper small on Estonian broadcast archives.")
    page.get_by_label("Field (optional)").select_option("Speech")
    page.get_by_label(re.compile(r"^H100 GPU-hours")).first.fill("100")
    why = page.get_by_label(re.compile(r"^Why H100 GPU-hours"))
    if why.count():
        why.first.fill("Three fine-tuning runs of about 30 GPU-hours each.")
    page.locator("#save-status .saved").wait_for()
    next_step(page, "Submit the application", role="button").click()
    page.wait_for_url(re.compile(r".*/applications/\d+$"))

    # The usable hours are one click away, on the project page.
    next_step(page, re.compile("project", re.IGNORECASE)).click()
    page.wait_for_url(f"{url}/projects/{project.id}**")
    row = page.locator("#allocations").get_by_role("row", name=re.compile("Whisper for Estonian"))
    assert "100.0 GPU-hours" in row.inner_text()
    assert_accessible(page, "project page with the Playground hours")

    assert clicks.count <= ACADEMIC_BUDGET, "\n".join(clicks.steps)
    assert errors == []
