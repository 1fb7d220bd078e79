"""Never a 500 for bad input: every route of ``app.url_map``, with hostile values in everything it reads.

The fields come from the app itself, so that a new route or form is covered without touching this file:
the ``<form>`` inputs of every page the crawl renders, the WTForms classes a view validates, the query
parameters a view module reads (``request.args.get("...")``) and the OpenAPI document of the JSON API.
Each field gets each hostile value in turn, the others keeping a valid value, so that the request reaches
the validation of that field (and, where the form lets it through, the service behind it).
"""

from __future__ import annotations

import inspect
import io
import json
import re
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
import stripe
from flask import Flask
from flask.testing import FlaskClient
from flask_wtf import FlaskForm
from portal_standin.devstack import free_port
from sqlalchemy import func
from sqlmodel import Session, select
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Rule
from wtforms import fields as wtf
from wtforms.fields.core import UnboundField

from portal.api.core import spec
from portal.audit.models import AuditEvent
from portal.config import Settings
from portal.grants import services as grants
from portal.grants.models import ApplicationFile
from portal.identity.models import ExternalIdentity, FactoryRole, User
from portal.identity.services import create_agent_token, create_api_token, grant_role
from portal.ledger.models import LedgerEntry, Resource
from portal.projects import services as projects
from tests.conftest import csrf_token
from tests.grants_world import login_of
from tests.projects import test_authorisation
from tests.projects.test_authorisation import ROUTES, values_for

#: The authorisation test's world: one object of every kind.
world = test_authorisation.world

# --- the hostile values -------------------------------------------------------------------------------------

#: Line breaks of every kind (LF, CR, NEL, LINE SEPARATOR) reach e-mail subjects through titles and names.
LINE_BREAKS = ["Evil\nBcc: spy@example.eu", "line\u2028separator\x85next\rreturn"]
TEXT = ["", " ", "\x00", "nul\x00in the middle", "Zażółć gęślą jaźń ☃ 🚀 \u202e", "x" * 100_000, *LINE_BREAKS]
NUMBERS = ["1e400", str(2**80), str(-(2**80)), "-1", "nan", "inf", "-inf", "0", "1.5", "0x10", "1,5", "١٢"]
DATES = ["2026-13-45", "0000-01-01", "9999-12-31", "2026-02-30", "1-1-1", "2026-01-01T25:61"]
CHOICES = ["no-such-choice", "<script>"]
#: What each kind of field gets: its own kind's hostile values and a few of every other kind's (a text field
#: may be parsed as a number behind it, a select's value as an id).
VALUES = {
    "text": [*TEXT, "1e400", str(2**80), "-1", "nan", "2026-13-45"],
    "number": [*NUMBERS, "", "\x00", "x" * 100_000],
    "date": [*DATES, "", "\x00", "x" * 100_000, "1e400"],
    "choice": [*CHOICES, "", " ", "\x00", "x" * 100_000, str(2**80), "-1", "nan"],
}
VALUES["file"] = VALUES["checkbox"] = VALUES["choice"]

#: URL arguments nothing has: per converter.
ABSURD_ARGUMENTS = {
    "IntegerConverter": ["0", "-1", str(2**31), str(2**63), str(2**70), "x"],
    "UnicodeConverter": ["x", "%00", "Za%C5%BC%C3%B3%C5%82%C4%87", "x" * 5000, "..", "%2e%2e%2fetc"],
    "PathConverter": ["x", "%00", "../../etc/passwd", "x" * 5000],
}

#: JSON values of every wrong type, for every property of an API body.
JSON_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**80,
    -(2**80),
    1e308,
    float("nan"),
    float("inf"),
    "",
    "\x00",
    "x" * 100_000,
    "1e400",
    "2026-13-45T25:61:00Z",
    "Zażółć ☃",
    "9999-12-31T23:59:59Z",  # usage from the future
    (datetime.now(UTC) + timedelta(days=1)).isoformat(),
    [],
    [1, "two", None],
    {},
    {"nested": {"deeper": [{"a": None}]}},
]
#: Whole bodies of the wrong shape.
JSON_BODIES: list[str] = [
    "[]",
    "[{}]",
    '"a string"',
    "123",
    "null",
    "{}",
    '{"nested": {"garbage": [1, 2, {"x": NaN}]}}',
    '{"unterminated": ',
    "\x00",
    "{" * 5000 + "}" * 5000,
]

#: Query parameters every page is sent besides the ones its view reads (callbacks read them inside libraries).
EXTRA_QUERY_KEYS = ("next", "code", "state", "error", "page")

#: Rules whose success ends what later requests need: they go last (and ``/logout`` very last).
ENDING_WORDS = ("close", "withdraw", "remove", "revoke", "cancel", "leave", "unlink", "refund", "reject", "accept")

#: The routes of an application's applicant: they get a draft.
ON_THE_DRAFT = {
    "grants.edit",
    "grants.autosave",
    "grants.pick_sites",
    "grants.upload",
    "grants.submit",
    "grants.withdraw",
}

#: What a route answers when the hub or Stripe is down, which is no bad input (and says so on its page).
DEPENDENCY_DOWN = (502, 503)

#: The hub and Stripe are down in this test: routes that need them must say so, not fail with a 500.
UNREACHABLE = "http://127.0.0.1:{port}"


@pytest.fixture
def settings(make_settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setattr(stripe._http_client.HTTPClient, "_sleep_time_seconds", lambda _self, _retries: 0)
    return make_settings(
        stripe_api_base=UNREACHABLE.format(port=free_port()), hub_url=UNREACHABLE.format(port=free_port())
    )


# --- what the app reads: forms on its pages, WTForms classes, query parameters -----------------------------


@dataclass
class FormField:
    name: str
    kind: str  # text, number, date, choice, file, checkbox
    value: str = ""
    options: list[str] = field(default_factory=list)


@dataclass
class Form:
    method: str
    action: str
    fields: dict[str, FormField] = field(default_factory=dict)


class FormParser(HTMLParser):
    """The ``<form>``s of a page with their inputs, selects and text areas (and their current values)."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.page = page
        self.forms: list[Form] = []
        self._form: Form | None = None
        self._select: FormField | None = None
        self._textarea: FormField | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            action = a.get("action") or a.get("hx-post") or a.get("hx-get") or self.page
            self._form = Form(a.get("method", "get").upper(), action)
            self.forms.append(self._form)
            if a.get("hx-post", action) != action:  # the same fields go to both (the editor's autosave)
                self.forms.append(Form("POST", a["hx-post"], self._form.fields))
        elif self._form is None or "name" not in a:
            if tag == "option" and self._select is not None:
                self._option(a)
            return
        elif tag == "input":
            kind = a.get("type", "text")
            if kind in ("submit", "button", "reset", "image"):
                return
            kinds = {"number": "number", "date": "date", "datetime-local": "date", "file": "file"}
            value = a.get("value", "")
            if kind in ("checkbox", "radio"):
                known = self._form.fields.get(a["name"])
                if known is not None:
                    known.options.append(value)
                    if "checked" in a:
                        known.value = value
                    return
                self._form.fields[a["name"]] = FormField(a["name"], "choice", value if "checked" in a else "", [value])
                return
            self._form.fields.setdefault(a["name"], FormField(a["name"], kinds.get(kind, "text"), value))
        elif tag == "select":
            self._select = self._form.fields.setdefault(a["name"], FormField(a["name"], "choice"))
        elif tag == "textarea":
            self._textarea = self._form.fields.setdefault(a["name"], FormField(a["name"], "text"))

    def _option(self, a: dict[str, str]) -> None:
        assert self._select is not None
        value = a.get("value", "")
        self._select.options.append(value)
        if "selected" in a or (not self._select.value and value):
            self._select.value = value

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self._textarea.value += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "select":
            self._select = None
        elif tag == "textarea" and self._textarea is not None:
            # a browser drops the line break that follows <textarea>
            self._textarea.value = self._textarea.value.removeprefix("\r\n").removeprefix("\n")
            self._textarea = None


WTFORMS_KINDS: list[tuple[type, str]] = [
    (wtf.FileField, "file"),
    (wtf.BooleanField, "checkbox"),
    (wtf.IntegerField, "number"),
    (wtf.DecimalField, "number"),
    (wtf.FloatField, "number"),
    (wtf.DateField, "date"),
    (wtf.DateTimeField, "date"),
    (wtf.SelectFieldBase, "choice"),
    (wtf.RadioField, "choice"),
]


def wtforms_fields(view: Any) -> dict[str, FormField]:
    """The fields of the WTForms classes the view validates (``SomeForm()``, not ``SomeForm(formdata=None)``)."""
    found: dict[str, FormField] = {}
    source = inspect.getsource(view)
    module = sys.modules[view.__module__]
    for name in re.findall(r"\b([A-Z]\w*Form)\((?!formdata=None)", source):
        form_class = getattr(module, name, None)
        if not (isinstance(form_class, type) and issubclass(form_class, FlaskForm)):
            continue
        for attr in dir(form_class):
            unbound = getattr(form_class, attr, None)
            if isinstance(unbound, UnboundField):
                kind = next((k for cls, k in WTFORMS_KINDS if issubclass(unbound.field_class, cls)), "text")
                found[attr] = FormField(attr, kind)
    return found


def read_parameters(view: Any, source: str) -> set[str]:
    """The parameters the view's module reads by name from ``request.<source>`` (``args`` or ``form``)."""
    module = inspect.getsource(sys.modules[view.__module__])
    return set(re.findall(rf"request\.{source}(?:\.get(?:list)?\(|\[)\s*[\"']([\w-]+)[\"']", module))


# --- requests and what counts as a failure -----------------------------------------------------------------


@dataclass
class Fuzz:
    app: Flask
    db: Session
    admin: User
    clients: dict[str, FlaskClient]
    csrf: dict[str, str]
    failures: list[str] = field(default_factory=list)
    sent: int = 0
    checked_unchanged: int = 0

    def send(self, who: str, method: str, url: str, *, unchanged: bool = False, **kwargs: Any) -> int | None:
        """One request; a 5xx (or an exception, which the test app propagates) is a failure."""
        self.sent += 1
        before = self.counts() if unchanged else None
        where = f"{who} {method} {url[:150]} {describe(kwargs)}"
        try:
            response = self.clients[who].open(url, method=method, **kwargs)
        except Exception as exc:
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            self.failures.append(f"{where}: {type(exc).__name__}: {str(exc)[:200]} at {frame.filename}:{frame.lineno}")
            self.db.rollback()
            return None
        status = response.status_code
        body = response.get_data().decode(errors="replace")
        response.close()
        if len(response.headers.get("Set-Cookie", "")) > 2000:
            with self.clients[who].session_transaction() as session:  # nobody follows the redirects here
                session.pop("_flashes", None)
        if status >= 500 and status not in DEPENDENCY_DOWN:
            self.failures.append(f"{where}: {status} {body[:200]}")
        elif url.startswith("/api/") and status >= 400 and response.mimetype != "application/problem+json":
            self.failures.append(f"{where}: {status} as {response.mimetype}, not application/problem+json")
        if before is not None and status < 500:
            self.checked_unchanged += 1
            after = self.counts()
            if after != before:
                self.failures.append(
                    f"{where}: {status} but changed (ledger entries, audit events): {before} -> {after}"
                )
        return status

    def counts(self) -> tuple[int, int]:
        self.db.expire_all()
        self.db.rollback()
        ledger_entries = self.db.exec(select(func.count()).select_from(LedgerEntry)).one()
        audit_events = self.db.exec(select(func.count()).select_from(AuditEvent)).one()
        return ledger_entries, audit_events


def describe(kwargs: dict[str, Any]) -> str:
    """The request's fields, each value cut short."""
    data = kwargs.get("data") or kwargs.get("query_string") or {}
    if isinstance(data, str):
        return repr(data[:100])
    shown = {k: repr(v)[:24] for k, v in data.items() if k != "csrf_token"}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


# --- the world: the authorisation test's, plus a factory admin and the people of its pipelines ------------


def login_again(login, client: FlaskClient, db: Session, user_id: int) -> None:
    identity = db.exec(select(ExternalIdentity).where(ExternalIdentity.user_id == user_id)).first()
    assert identity is not None
    login(client, sub=identity.subject)


@pytest.fixture
def fuzz(app: Flask, db: Session, world: SimpleNamespace, login) -> Fuzz:
    clients = {"admin": app.test_client(), "owner": world.owner_client, "member": world.member_client}
    admin = login(clients["admin"], given_name="Ada", family_name="Admin")
    for role in (FactoryRole.ADMIN, FactoryRole.FINANCE):
        grant_role(db, None, admin, role, reason="test setup")
    for who, user_id in (
        ("manager", world.call.manager_id),
        ("reviewer", world.review.reviewer_id),
        ("student", world.seat.user_id),
    ):
        clients[who] = app.test_client()
        login_again(login, clients[who], db, user_id)
    return Fuzz(app, db, admin, clients, {who: csrf_token(c) for who, c in clients.items()})


def url_values(app: Flask, db: Session, world: SimpleNamespace, fuzz: Fuzz) -> dict[str, str]:
    identity = db.exec(select(ExternalIdentity).where(ExternalIdentity.user_id == fuzz.admin.id)).one()
    token, _plain = create_api_token(db, fuzz.admin, name="own", scopes=["read"], ttl_days=5)
    values = {k: str(v) for k, v in values_for(world).items()}
    values.update(identity_id=str(identity.id), token_id=str(token.id), name="eidas", filename="css/portal.css")
    # the applicant's routes work on a draft: the world's own application was decided long ago
    project = projects.create_project(db, world.owner, world.org, title="Draft project")
    draft = grants.start_application(
        db, world.owner, login_of(world.owner), call=world.call, project=project, title="D"
    )
    values["draft_application_id"] = str(draft.id)
    manager = db.get(User, world.call.manager_id)
    assert manager is not None and manager.email
    values["manager_email"] = manager.email
    resource = db.get(Resource, world.allocation.resource_id)
    assert resource is not None
    values.update(resource_id=str(resource.id), site_id=str(resource.site_id))
    projects.verify_organisation(db, fuzz.admin, world.org, reason="test setup")  # so that it may buy
    return values


def fill(rule: Rule, values: dict[str, str], **overrides: str) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in overrides:
            return overrides[name]
        if name == "name" and "report" in rule.rule:
            return values["report"]
        if name == "application_id" and rule.endpoint in ON_THE_DRAFT:
            return values["draft_application_id"]
        return values[name]

    return re.sub(r"<(?:[a-z]+(?:\([^)]*\))?:)?([a-z_]+)>", one, rule.rule)


# --- the tests ---------------------------------------------------------------------------------------------


def html_rules(app: Flask) -> Iterator[tuple[Rule, str]]:
    """(rule, method) of every non-API route, in an order that keeps the world alive longest."""

    def last(pair: tuple[Rule, str]) -> tuple[int, str]:
        rule, _method = pair
        ending = rule.rule.rsplit("/", 1)[-1] in ENDING_WORDS
        return (2 if rule.endpoint == "identity.logout" else 1 if ending else 0), rule.rule

    pairs = [
        (rule, method)
        for rule in app.url_map.iter_rules()
        if not rule.rule.startswith("/api/")
        for method in sorted(rule.methods or ())
        if method in ("GET", "POST")
    ]
    yield from sorted(pairs, key=last)


def test_no_page_or_form_answers_500_to_hostile_input(
    app: Flask,
    db: Session,
    world: SimpleNamespace,
    fuzz: Fuzz,
) -> None:
    values = url_values(app, db, world, fuzz)
    adapter = app.url_map.bind("localhost")
    rules = list(html_rules(app))

    # every page, as everyone: the forms on them tell what each POST route reads
    forms: dict[tuple[str, str], Form] = {}
    for rule, method in rules:
        if method != "GET":
            continue
        url = fill(rule, values)
        for who in fuzz.clients:
            response = fuzz.clients[who].get(url)
            page = response.get_data()  # read, and close, every response: a streamed one holds its context
            response.close()
            if response.status_code != 200 or response.mimetype != "text/html":
                continue
            parser = FormParser(url)
            parser.feed(page.decode())
            for form in parser.forms:
                try:
                    matched, _args = adapter.match(urlsplit(form.action).path, method=form.method, return_rule=True)
                except HTTPException:
                    continue
                known = forms.setdefault((matched.rule, form.method), Form(form.method, form.action))
                for name, found in form.fields.items():
                    known.fields.setdefault(name, found)
    valid_data = {(r.rule, r.method): r.data or {} for r in ROUTES if not r.api}

    for rule, method in rules:
        view = app.view_functions[rule.endpoint]
        url = fill(rule, values)
        form = forms.get((rule.rule, method))
        fields: dict[str, FormField] = dict(form.fields) if form else {}
        for name, declared in wtforms_fields(view).items() if method == "POST" else ():
            fields.setdefault(name, declared).kind = declared.kind  # the class knows the kind, the page the value
        for name in read_parameters(view, "args" if method == "GET" else "form"):
            fields.setdefault(name, FormField(name, "text"))
        fields.pop("csrf_token", None)

        baseline = {name: f.value or valid_value(f, values) for name, f in fields.items() if f.kind != "file"}
        if method == "GET":
            baseline = {name: value for name, value in baseline.items() if fields[name].value}
        for name, value in valid_data.get((rule.rule, method), {}).items():
            baseline[name] = values[value[1:-1]] if value.startswith("<") else value

        # who answers this route: the admin, else someone it is for (the member, the reviewer, the student)
        who = "admin"
        if method == "POST":
            answers = {candidate: post(fuzz, candidate, url, baseline) for candidate in fuzz.clients}
            accepted = [c for c, status in answers.items() if status is not None and status < 400]
            heard = [c for c, status in answers.items() if status not in (403, 404)]
            who = (accepted or heard or ["admin"])[0]
        else:
            fuzz.send(who, "GET", url, query_string=dict.fromkeys(EXTRA_QUERY_KEYS, "\x00" + "x" * 10_000))

        # absurd URL arguments
        for argument, converter in rule._converters.items():
            for absurd in ABSURD_ARGUMENTS.get(type(converter).__name__, ABSURD_ARGUMENTS["UnicodeConverter"]):
                wrong = fill(rule, values, **{argument: absurd})
                if method == "GET":
                    fuzz.send(who, "GET", wrong)
                else:
                    post(fuzz, who, wrong, baseline, unchanged=True)

        # every field with every hostile value of its kind, the others valid; then missing and doubled
        for name, found in fields.items():
            for value in VALUES[found.kind]:
                if method == "GET":
                    fuzz.send(who, "GET", url, query_string={**baseline, name: value})
                else:
                    post(fuzz, who, url, {**baseline, name: value})
            if method == "GET":
                continue
            if found.kind == "file":
                for upload in uploads():
                    post(fuzz, who, url, {**baseline, name: upload})
            post(fuzz, who, url, {k: v for k, v in baseline.items() if k != name})
            post(fuzz, who, url, {**baseline, name: [baseline.get(name, ""), "second value"]})
        if method == "POST":
            post(fuzz, who, url, {})
            # where a number is asked for, no field of garbage gets through
            numeric = any(f.kind == "number" for f in fields.values())
            for value in ("nan", "1e400", "-1"):
                post(fuzz, who, url, dict.fromkeys(fields, value), unchanged=numeric)

    print(f"{fuzz.sent} requests to {len(rules)} (rule, method) pairs; {fuzz.checked_unchanged} checked unchanged")
    assert not fuzz.failures, f"{len(fuzz.failures)} of {fuzz.sent} requests failed:\n" + "\n".join(fuzz.failures)


#: Values that pass a field's own checks, by its name, where its page shows none.
VALID_BY_NAME = {
    "title": "Fuzzed title",
    "price": "2.50",
    "factor": "1.2",
    "min_request": "1",
    "max_request": "100",
    "opens_on": "2030-01-01",
    "first_cutoff": "2030-02-01",
    "questions": "[]",
    "criteria": "[]",
    "name": "fuzz",
    "ttl_days": "30",
}


def valid_value(found: FormField, values: dict[str, str]) -> str:
    """A value the field would take, where its page shows none: so that the other fields' checks pass."""
    if found.name in VALID_BY_NAME:
        return VALID_BY_NAME[found.name]
    if found.name in values:
        return values[found.name]
    if found.kind == "date":
        return "2030-03-31" if found.name.startswith(("ends", "closes")) else "2030-01-15"
    if found.kind in ("number", "checkbox") or re.search(r"hours|quantity|capacity|percent", found.name):
        return "1"
    if found.kind == "choice":
        return next((o for o in found.options if o), "")
    if found.name == "reason" or found.name.endswith("_reason"):
        return "Checking how the portal answers bad input"
    return "someone@example.eu" if "email" in found.name else ""


def uploads() -> list[tuple[io.BytesIO, str]]:
    return [
        (io.BytesIO(b""), "empty.pdf"),
        (io.BytesIO(b"not a pdf at all"), "plan.pdf"),
        (io.BytesIO(b"%PDF-1.4 tiny"), "nul\x00name.pdf"),
        (io.BytesIO(b"%PDF-1.4 tiny"), "Zażółć ☃ " + "x" * 5000 + ".pdf"),
        (io.BytesIO(b"%PDF-1.4 tiny"), "../../etc/passwd"),
        (io.BytesIO(b"%PDF-1.4 tiny"), "case.html"),
    ]


def post(fuzz: Fuzz, who: str, url: str, data: dict[str, Any], *, unchanged: bool = False) -> int | None:
    return fuzz.send(
        who,
        "POST",
        url,
        data={"csrf_token": fuzz.csrf[who], **data},
        content_type="multipart/form-data",
        unchanged=unchanged,
    )


# --- the JSON API ------------------------------------------------------------------------------------------

#: Every hostile value of every kind, for query parameters whose kind the OpenAPI document names loosely.
ALL_VALUES = list(dict.fromkeys(v for kind in ("text", "number", "date", "choice") for v in VALUES[kind]))


def mutations(body: Any) -> Iterator[Any]:
    """The body with each of its values in turn (nested ones too) replaced by every hostile JSON value, each
    key dropped, and an unknown key added."""
    if isinstance(body, dict):
        for key, value in body.items():
            for wrong in [*JSON_VALUES, *mutations(value)]:
                yield {**body, key: wrong}
            yield {k: v for k, v in body.items() if k != key}
        yield {**body, "unknown": {"nested": [None]}}
    elif isinstance(body, list) and body:
        for wrong in [*JSON_VALUES, *mutations(body[0])]:
            yield [wrong, *body[1:]]
        yield body * 1001  # more records than a batch may hold


def api_send(
    fuzz: Fuzz, method: str, url: str, auth: dict[str, str], body: Any, *, raw: str | None = None, **kwargs: Any
) -> int | None:
    """A JSON API request with ``body`` (or the ``raw`` text) and the route's token."""
    if method == "GET":
        return fuzz.send("admin", "GET", url, headers=auth, **kwargs)
    kwargs.setdefault("content_type", "application/json")
    text = raw if raw is not None else json.dumps(body)
    return fuzz.send("admin", method, url, data=text, headers=auth, **kwargs)


def test_api_answers_problem_details_to_every_wrong_shape(
    app: Flask, db: Session, world: SimpleNamespace, fuzz: Fuzz, settings: Settings
) -> None:
    values = url_values(app, db, world, fuzz)
    _t, admin_token = create_api_token(
        db, fuzz.admin, name="fuzz", scopes=["read", "write", "reports:read"], ttl_days=5
    )
    resource = db.get(Resource, world.allocation.resource_id)
    assert resource is not None
    _t, agent_token = create_agent_token(
        db, None, owner=fuzz.admin, site_id=resource.site_id, name="fuzz-agent", reason="test setup"
    )
    running = world.notebook.allocation_id
    now = datetime.now(UTC).replace(microsecond=0)
    #: A valid body per route (the authorisation test's where it has one), and the token the route takes.
    bodies: dict[str, Any] = {r.rule.replace("<int:", "{").replace(">", "}"): r.data for r in ROUTES if r.api}
    bodies["/api/v1/usage"] = {
        "records": [
            {
                "id": "fuzz-1",
                "allocation_id": world.allocation.id,
                "quantity": 60,
                "started_at": (now - timedelta(hours=2)).isoformat(),
                "ended_at": (now - timedelta(hours=1)).isoformat(),
                "user": "someone",
            }
        ]
    }
    bodies["/api/v1/hub/spawn-check"] = {
        "user": f"u{world.owner.id}",
        "server_name": f"a{running}-9",
        "user_options": {"allocation": running, "profile": "cpu", "hours": 1},
    }
    tokens = {"/api/v1/usage": agent_token, "/api/v1/hub/spawn-check": settings.hub_spawn_check_token}

    with app.app_context():
        document = spec.spec
    adapter = app.url_map.bind("localhost")
    covered = set()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            method = method.upper()
            rule, _args = adapter.match(re.sub(r"\{(\w+)\}", "1", path), method=method, return_rule=True)
            covered.add((rule.rule, method))
            auth = {"Authorization": f"Bearer {tokens.get(path, admin_token)}"}
            url = fill(rule, values)

            def send(url: str, body: Any = None, **kw: Any) -> int | None:
                return api_send(fuzz, method, url, auth, body, **kw)  # noqa: B023  (called in this iteration only)

            body = bodies.get(path)
            for argument, converter in rule._converters.items():
                for absurd in ABSURD_ARGUMENTS.get(type(converter).__name__, ABSURD_ARGUMENTS["UnicodeConverter"]):
                    send(fill(rule, values, **{argument: absurd}), body, unchanged=True)
            for parameter in operation.get("parameters", ()):
                if parameter["in"] == "query":
                    for value in ALL_VALUES:
                        send(url, query_string={parameter["name"]: value})
            if method == "GET":
                continue
            for shape in JSON_BODIES:
                send(url, raw=shape, unchanged=True)
            send(url, raw="title=form-encoded", content_type="application/x-www-form-urlencoded", unchanged=True)
            send(url, raw="", unchanged=True)
            for wrong in mutations(body):
                send(url, wrong)

    api_rules = {(r.rule, m) for r in app.url_map.iter_rules() if r.rule.startswith("/api/") for m in r.methods or ()}
    missing = {(r, m) for r, m in api_rules if m in ("GET", "POST")} - covered - {("/api/v1/openapi.json", "GET")}
    assert not missing, f"API routes the OpenAPI document does not describe: {sorted(missing)}"
    print(f"{fuzz.sent} API requests; {fuzz.checked_unchanged} checked unchanged")
    assert not fuzz.failures, f"{len(fuzz.failures)} of {fuzz.sent} requests failed:\n" + "\n".join(fuzz.failures)


# --- the cases of issue 15, one by one ---------------------------------------------------------------------


def test_line_breaks_future_usage_webhooks_and_upload_names_are_answered_without_harm(
    app: Flask, db: Session, world: SimpleNamespace, fuzz: Fuzz, settings: Settings
) -> None:
    """Each hostile case found by the probe of issue 15, through the routes a user or a caller reaches."""
    project, owner = world.project, world.owner
    # a line break in a project's title and in a person's name never reaches an e-mail header
    for title in LINE_BREAKS:
        post(fuzz, "owner", f"/projects/{project.id}/edit", {"title": title, "description": ""})
        post(fuzz, "owner", f"/projects/{project.id}/invitations", {"email": "invitee@example.eu", "role": "member"})
    resource = db.get(Resource, world.allocation.resource_id)
    assert resource is not None
    draft = grants.start_application(
        db, owner, login_of(owner), call=world.call, project=project, title="Line\nbreak\u2028in\x85a title"
    )
    grants.save_draft(
        db, owner, draft, abstract="A.", requests=[grants.RequestInput(resource.id, 10 * 3600, "Because")]
    )
    submitted = post(fuzz, "owner", f"/applications/{draft.id}/submit", {})
    assert submitted is not None and submitted < 400, fuzz.failures

    # a PDF uploaded as case.html is served back as case.pdf
    other = grants.start_application(db, owner, login_of(owner), call=world.call, project=project, title="Files")
    upload = (io.BytesIO(b"%PDF-1.4 tiny"), "case.html")
    post(fuzz, "owner", f"/applications/{other.id}/files", {"question": "plan", "file": upload})
    db.expire_all()
    kept = db.exec(select(ApplicationFile).where(ApplicationFile.application_id == other.id)).one()
    served = fuzz.clients["owner"].get(f"/files/{kept.id}")
    assert served.headers["Content-Disposition"] == "attachment; filename=case.pdf"

    # site agents' usage from the future is refused with a problem and charges nothing
    _t, agent = create_agent_token(
        db, None, owner=fuzz.admin, site_id=resource.site_id, name="future-agent", reason="test setup"
    )
    now = datetime.now(UTC)
    later = [(now + timedelta(hours=h)).isoformat() for h in (1, 2)]
    record = {"id": "future-1", "allocation_id": world.allocation.id, "quantity": 60,
              "started_at": later[0], "ended_at": later[1]}  # fmt: skip
    status = fuzz.send("admin", "POST", "/api/v1/usage", unchanged=True, json={"records": [record]},
                       headers={"Authorization": f"Bearer {agent}"})  # fmt: skip
    assert status == 422

    # Stripe webhooks signed in the future are refused, and change nothing
    event = json.dumps({"id": "evt_future", "object": "event", "type": "checkout.session.completed",
                        "data": {"object": {"id": "cs_x", "object": "checkout.session"}}})  # fmt: skip
    for signed_at in (int(now.timestamp()) + 3600, int(now.timestamp()) - 3600):
        signature = stripe.WebhookSignature._compute_signature(f"{signed_at}.{event}", settings.stripe_webhook_secret)
        headers = {"Stripe-Signature": f"t={signed_at},v1={signature}", "Content-Type": "application/json"}
        status = fuzz.send("admin", "POST", "/market/stripe/webhook", unchanged=True, data=event, headers=headers)
        assert status == 400
    assert not fuzz.failures, "\n".join(fuzz.failures)


# --- methods and session cookies (issue 15) -------------------------------------------------------------------


def test_every_route_answers_trace_with_405_and_the_methods_it_allows(app: Flask) -> None:
    client = app.test_client()
    for rule in app.url_map.iter_rules():
        url = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", "1", rule.rule)
        response = client.open(url, method="TRACE")
        assert response.status_code == 405, (rule.rule, response.status_code)
        allowed = set(response.headers["Allow"].split(", "))
        assert (rule.methods or set()) <= allowed, (rule.rule, allowed)


@pytest.mark.parametrize("key", [12345, ["a", "b"], {"k": "v"}, "", "\x00", "x" * 5000, None])
def test_a_session_cookie_with_a_hostile_session_key_is_simply_not_logged_in(
    client: FlaskClient, login, key: Any
) -> None:
    login(client)
    with client.session_transaction() as flask_session:
        flask_session["web_session"] = key
    response = client.get("/account")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
