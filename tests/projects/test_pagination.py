"""Lists that grow with data come in keyset pages: every row once, in a stable order, searchable, and only
what the reader may see."""

from __future__ import annotations

import itertools
import re
from html import unescape
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import Session

from portal.db import utcnow
from portal.identity.services import create_api_token
from portal.pagination import Cursor
from portal.projects import services
from portal.projects.models import Project
from tests.ledger.test_ledger_postgres import engine  # noqa: F401  (the migrated PostgreSQL engine)
from tests.ledger_world import person

#: Titles with ties (three "Alpha"), mixed case, and one project archived (listed last on the dashboard).
TITLES = ["Alpha", "beta", "Alpha", "Gamma", "alpha two", "Alpha", "Delta", "Epsilon"]


@pytest.fixture
def lab(app: Flask, db: Session, login) -> SimpleNamespace:
    client = app.test_client()
    owner = login(client, given_name="Liis", family_name="Lists")
    org = services.create_organisation(db, owner, name="Tartu Lists OÜ", kind="sme", country="EE")
    projects = [services.create_project(db, owner, org, title=t) for t in TITLES]
    projects[6].archived_at = utcnow()  # no service archives a project yet; the dashboard must still order it
    db.commit()
    expected = sorted(projects, key=lambda p: (p.archived_at is not None, p.title, p.id))
    return SimpleNamespace(client=client, owner=owner, org=org, projects=projects, expected=[p.id for p in expected])


def walk(first_page, follow):
    """Every page from the first by following ``next_cursor``; also checks that ``previous_cursor`` leads back."""
    pages = [first_page]
    while pages[-1].next_cursor:
        pages.append(follow(pages[-1].next_cursor))
    for earlier, later in itertools.pairwise(pages):
        assert later.previous_cursor is not None
        assert [id_of(i) for i in follow(later.previous_cursor).items] == [id_of(i) for i in earlier.items]
    assert pages[0].previous_cursor is None
    return [id_of(i) for page in pages for i in page.items]


def id_of(item) -> int:
    return item.project.id if isinstance(item, services.ProjectSummary) else item.id


@pytest.mark.parametrize("size", [1, 2, 3, 8, 50])
def test_dashboard_pages_hold_every_project_once_in_a_stable_order(db: Session, lab, size: int) -> None:
    def follow(cursor: str):
        return services.project_page_of(db, lab.owner, cursor=cursor, size=size)

    seen = walk(services.project_page_of(db, lab.owner, size=size), follow)
    assert seen == lab.expected  # no row repeated or skipped, ties on the title ordered by id, archived last
    assert len(seen) == len(set(seen)) == len(TITLES)


def test_organisation_pages_and_search_are_case_insensitive_and_find_ids(db: Session, lab) -> None:
    def follow(cursor: str, query: str = ""):
        return services.projects_of_organisation(db, lab.owner, lab.org, query=query, cursor=cursor, size=2)

    by_title = sorted(lab.projects, key=lambda p: (p.title, p.id))
    assert walk(follow(""), follow) == [p.id for p in by_title]

    alphas = [p.id for p in by_title if "alpha" in p.title.lower()]
    first = services.projects_of_organisation(db, lab.owner, lab.org, query="  ALPHA ", size=2)
    assert walk(first, lambda c: follow(c, "ALPHA")) == alphas and len(alphas) == 4
    delta = lab.projects[6]
    assert [p.id for p in services.projects_of_organisation(db, lab.owner, lab.org, query=str(delta.id)).items] == [
        delta.id
    ]
    # LIKE's wildcards are searched for as text
    assert services.projects_of_organisation(db, lab.owner, lab.org, query="%").items == []
    assert services.projects_of_organisation(db, lab.owner, lab.org, query="_").items == []


def test_rows_added_while_reading_are_neither_repeated_nor_skipped_on_later_pages(db: Session, lab) -> None:
    first = services.project_page_of(db, lab.owner, size=3)
    services.create_project(db, lab.owner, lab.org, title="Aardvark")  # sorts before the page already read
    late = services.create_project(db, lab.owner, lab.org, title="Zeta")  # sorts after it
    rest = []
    cursor = first.next_cursor
    while cursor:
        page = services.project_page_of(db, lab.owner, cursor=cursor, size=3)
        rest += [s.project.id for s in page.items]
        cursor = page.next_cursor
    read = [s.project.id for s in first.items] + rest
    assert len(read) == len(set(read))
    assert late.id in rest and set(lab.expected) <= set(read)


def links(html: str, rel: str) -> list[str]:
    return [unescape(h) for h in re.findall(rf'<a rel="{rel}" href="([^"]+)"', html)]


def project_links(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'href="/projects/(\d+)"', html)]


def test_dashboard_next_and_previous_links_walk_the_list(lab) -> None:
    client: FlaskClient = lab.client
    html = client.get("/?size=3").get_data(as_text=True)
    assert 'role="search"' in html and not links(html, "prev")
    pages = [project_links(html)]
    while links(html, "next"):
        (target,) = links(html, "next")
        response = client.get(target)
        assert response.status_code == 200
        html = response.get_data(as_text=True)
        pages.append(project_links(html))
    assert [i for page in pages for i in page] == lab.expected
    (back,) = links(html, "prev")
    assert project_links(client.get(back).get_data(as_text=True)) == pages[-2]

    found = client.get("/?q=alPHA").get_data(as_text=True)
    assert sorted(project_links(found)) == sorted(p.id for p in lab.projects if "alpha" in p.title.lower())
    assert "None of your projects matches" in client.get("/?q=nothing-like-it").get_data(as_text=True)


def test_organisation_page_is_paginated_with_search(lab) -> None:
    client: FlaskClient = lab.client
    html = client.get(f"/organisations/{lab.org.id}?size=5").get_data(as_text=True)
    first = project_links(html)
    (target,) = links(html, "next")
    second = project_links(client.get(target).get_data(as_text=True))
    assert len(first) == 5 and first + second == [p.id for p in sorted(lab.projects, key=lambda p: (p.title, p.id))]
    searched = client.get(f"/organisations/{lab.org.id}?q=gamma").get_data(as_text=True)
    assert project_links(searched) == [lab.projects[3].id]


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor",
        "%%%",
        Cursor((1, 2)).encode(),  # the wrong shape
        Cursor(("0", "Alpha", 1)).encode(),  # the wrong types
        "W10",  # "[]"
    ],
)
def test_a_cursor_the_portal_did_not_hand_out_is_refused_with_400(db: Session, lab, cursor: str) -> None:
    _row, token = create_api_token(db, lab.owner, name="lists", scopes=["read"], ttl_days=1)
    response = lab.client.get("/api/v1/projects", query_string={"cursor": cursor}, headers=bearer(token))
    assert response.status_code == 400 and response.mimetype == "application/problem+json"
    assert response.json["title"] == "Invalid cursor"
    assert lab.client.get("/", query_string={"cursor": cursor}).status_code == 400
    assert lab.client.get(f"/organisations/{lab.org.id}", query_string={"cursor": cursor}).status_code == 400


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_api_lists_projects_a_page_at_a_time_with_a_next_link(db: Session, lab) -> None:
    _row, token = create_api_token(db, lab.owner, name="lists", scopes=["read"], ttl_days=1)
    body = lab.client.get("/api/v1/projects?size=3", headers=bearer(token)).json
    ids = [p["id"] for p in body["projects"]]
    while body["next"]:
        assert body["next"].startswith("/api/v1/projects?") and body["next_cursor"] in body["next"]
        body = lab.client.get(body["next"], headers=bearer(token)).json
        ids += [p["id"] for p in body["projects"]]
    assert ids == lab.expected
    found = lab.client.get("/api/v1/projects?q=EPSILON", headers=bearer(token)).json
    assert [p["title"] for p in found["projects"]] == ["Epsilon"] and found["next"] is None
    assert lab.client.get("/api/v1/projects?size=0", headers=bearer(token)).status_code == 422

    document = lab.client.get("/api/v1/openapi.json").json
    operation = document["paths"]["/api/v1/projects"]["get"]
    assert {p["name"] for p in operation["parameters"]} >= {"cursor", "q", "size"}
    assert "400" in operation["responses"]


def test_another_organisations_member_sees_nothing_of_it_on_any_page(app: Flask, db: Session, login, lab) -> None:
    client = app.test_client()
    stranger = login(client, given_name="Sten", family_name="Stranger")
    theirs = services.create_organisation(db, stranger, name="Other Lists AS", kind="sme", country="EE")
    own = services.create_project(db, stranger, theirs, title="Alpha of their own")
    _row, token = create_api_token(db, stranger, name="lists", scopes=["read"], ttl_days=1)

    assert project_links(client.get("/?q=alpha").get_data(as_text=True)) == [own.id]
    assert "Tartu Lists" not in client.get("/?q=Tartu").get_data(as_text=True)
    listed = client.get("/api/v1/projects?q=alpha", headers=bearer(token)).json
    assert [p["id"] for p in listed["projects"]] == [own.id]
    assert client.get(f"/organisations/{lab.org.id}?q=alpha").status_code == 404
    # a cursor taken from the owner's list leads the stranger only through their own projects
    owners = services.project_page_of(db, lab.owner, size=1)
    assert services.project_page_of(db, stranger, cursor=owners.next_cursor).items == [] or all(
        s.project.organisation_id == theirs.id
        for s in services.project_page_of(db, stranger, cursor=owners.next_cursor).items
    )
    # and the owner sees nothing of the stranger's
    assert own.id not in project_links(lab.client.get("/?q=alpha").get_data(as_text=True))


def test_member_counts_cover_only_the_page_and_are_right(app: Flask, db: Session, login, settings, lab) -> None:
    guest = login(app.test_client(), given_name="Gert", family_name="Guest")
    target = lab.projects[0]
    _inv, link = services.invite_member(db, settings, lab.owner, target, email=guest.email or "", role="member")
    services.accept_invitation(db, guest, link.rsplit("/", 1)[1])

    statements: list[str] = []
    app_engine = app.extensions["portal.engine"]

    def record(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    sa.event.listen(app_engine, "before_cursor_execute", record)
    try:
        page = services.project_page_of(db, lab.owner, size=3)
    finally:
        sa.event.remove(app_engine, "before_cursor_execute", record)
    counts = {s.project.id: s.member_count for s in page.items}
    assert counts == {i: (2 if i == target.id else 1) for i in lab.expected[:3]}
    assert len(statements) == 2
    assert "GROUP BY" in statements[1] and " IN " in statements[1]


def test_project_page_reads_a_bounded_number_of_statements(app: Flask, db: Session, lab) -> None:
    app_engine = app.extensions["portal.engine"]
    project: Project = lab.projects[0]
    lab.client.get(f"/projects/{project.id}")  # warm: templates compiled, login cached
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    sa.event.listen(app_engine, "before_cursor_execute", record)
    try:
        response = lab.client.get(f"/projects/{project.id}")
    finally:
        sa.event.remove(app_engine, "before_cursor_execute", record)
    assert response.status_code == 200
    membership = [s for s in statements if "FROM project_memberships" in s and "project_memberships.user_id =" in s]
    assert len(membership) <= PROJECT_PAGE_MEMBERSHIP_READS, "\n\n".join(membership)
    assert len(statements) <= PROJECT_PAGE_STATEMENTS, "\n\n".join(statements)


#: Upper bounds for one request of the project page (measured: see the test above).
PROJECT_PAGE_MEMBERSHIP_READS = 1
PROJECT_PAGE_STATEMENTS = 12


def test_dashboard_reads_the_same_statements_with_one_page_of_projects_as_with_many(app: Flask, db: Session, lab):
    app_engine = app.extensions["portal.engine"]

    def statements_of_dashboard() -> int:
        lab.client.get("/")  # warm
        seen: list[str] = []

        def record(_conn, _cursor, statement, *_args) -> None:
            seen.append(statement)

        sa.event.listen(app_engine, "before_cursor_execute", record)
        try:
            assert lab.client.get("/").status_code == 200
        finally:
            sa.event.remove(app_engine, "before_cursor_execute", record)
        return len(seen)

    few = statements_of_dashboard()
    for i in range(60):
        services.create_project(db, lab.owner, lab.org, title=f"Bulk {i:02}")
    html = lab.client.get("/").get_data(as_text=True)
    assert len(project_links(html)) == 50 and links(html, "next")
    assert statements_of_dashboard() == few


@pytest.mark.postgres
def test_pages_and_search_on_postgresql(engine) -> None:  # noqa: F811
    """The same keyset walk on PostgreSQL, whose row comparison and collation order the pages there."""
    with Session(engine, expire_on_commit=False) as db:
        owner = person(db, "Pagination")
        org = services.create_organisation(db, owner, name="Postgres Lists SIA", kind="sme", country="LV")
        made = [services.create_project(db, owner, org, title=t) for t in TITLES]
        made[6].archived_at = utcnow()
        db.commit()
        expected = [p.id for p in sorted(made, key=lambda p: (p.archived_at is not None, p.title, p.id))]

        def follow(cursor: str):
            return services.project_page_of(db, owner, cursor=cursor, size=3)

        assert walk(services.project_page_of(db, owner, size=3), follow) == expected
        found = services.projects_of_organisation(db, owner, org, query="ALPHA", size=2)
        assert walk(
            found, lambda c: services.projects_of_organisation(db, owner, org, query="ALPHA", cursor=c, size=2)
        ) == [p.id for p in sorted(made, key=lambda p: (p.title, p.id)) if "alpha" in p.title.lower()]
