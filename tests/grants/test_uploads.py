"""PDFs uploaded to applications: a replaced file is gone, each user's uploads stay within their quota, and a
file is always served back as ``<safe-name>.pdf``, whatever name it was uploaded under."""

from __future__ import annotations

import io

import pytest
from sqlmodel import Session, select

from portal.config import Settings
from portal.grants.models import ApplicationFile
from tests.conftest import post_form
from tests.grants.test_grants_pages import PDF, draft, g, reload, text

#: The fixtures of tests/grants/test_grants_pages.py, used here by name.
__all__ = ["g"]

#: A PDF of 1,100 bytes; the quota of this module's app holds two of them, not three.
PAGE = PDF + b"%" * (1100 - len(PDF))
QUOTA = 3000


@pytest.fixture
def settings(make_settings) -> Settings:
    return make_settings(upload_quota_bytes=QUOTA)


def upload(g, application_id: int, content: bytes, name: str):
    return post_form(
        g.pi_client,
        f"/applications/{application_id}/files",
        {"question": "plan", "file": (io.BytesIO(content), name)},
        page=f"/applications/{application_id}/edit",
        content_type="multipart/form-data",
    )


def stored(db: Session) -> list[ApplicationFile]:
    db.expire_all()
    return list(db.exec(select(ApplicationFile).order_by(ApplicationFile.id)))


def test_a_replaced_pdf_is_deleted_and_no_longer_served(g, db):
    application = draft(db, g)
    assert upload(g, application.id, PAGE, "plan-v1.pdf").status_code == 302
    first_id = stored(db)[0].id
    for version in range(2, 6):
        assert upload(g, application.id, PAGE, f"plan-v{version}.pdf").status_code == 302
    (latest,) = stored(db)  # one file, not five: the database does not grow with replacements
    assert latest.filename == "plan-v5.pdf"
    assert reload(db, application).answers["plan"] == latest.id
    assert g.pi_client.get(f"/files/{first_id}").status_code == 404
    assert g.pi_client.get(f"/files/{latest.id}").data == PAGE


def test_uploads_past_the_users_quota_are_refused_saying_how_much_is_used(g, db):
    drafts = [draft(db, g, title=f"Draft {n}") for n in range(3)]
    assert upload(g, drafts[0].id, PAGE, "a.pdf").status_code == 302
    assert upload(g, drafts[1].id, PAGE, "b.pdf").status_code == 302

    refused = upload(g, drafts[2].id, PAGE, "c.pdf")

    assert refused.status_code == 422
    page = text(refused)
    assert "This file would take you past your upload quota." in page
    assert "Your files take 2.2 kB of your 3.0 kB; this one needs 1.1 kB." in page
    assert [f.filename for f in stored(db)] == ["a.pdf", "b.pdf"]
    assert "plan" not in reload(db, drafts[2]).answers
    # replacing a file frees its room: the quota counts what is kept
    assert upload(g, drafts[1].id, PAGE, "b2.pdf").status_code == 302
    assert [f.filename for f in stored(db)] == ["a.pdf", "b2.pdf"]


def test_a_file_is_served_as_a_safe_pdf_name_whatever_it_was_uploaded_as(g, db):
    application = draft(db, g)
    for given, served in [
        ("case.html", "case.pdf"),
        ("../../etc/passwd", "etc_passwd.pdf"),
        ("<script>alert(1)</script>.html", "scriptalert1_script.pdf"),
        ("invoice.pdf.exe", "invoice.pdf.pdf"),
        ("Zażółć.pdf", "Zazoc.pdf"),
    ]:
        assert upload(g, application.id, PDF, given).status_code == 302, given
        (kept,) = stored(db)
        response = g.pi_client.get(f"/files/{kept.id}")
        assert response.status_code == 200 and response.mimetype == "application/pdf"
        assert response.headers["Content-Disposition"] == f"attachment; filename={served}", given
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        editor = text(g.pi_client.get(f"/applications/{application.id}/edit"))
        assert served in editor and given not in editor
