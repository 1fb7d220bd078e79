"""A course end to end, in a real browser: a teacher creates a course from her allocation, a student logs in
through the OIDC provider, joins with the code, launches a notebook at a real JupyterHub from the course's
page, and after a metering round the teacher's dashboard shows the student's use. axe-core checks the pages.

Same harness as ``tests/compute/test_browser_notebooks.py``.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlmodel import Session, select

pytest.importorskip("jupyterhub", reason="needs the [hub] extra")

from portal.classroom.models import CourseSeat
from portal.compute.launch import meter_notebooks
from portal.db import utcnow
from portal.formatting import quantity
from portal.identity.models import User
from portal.ledger.models import ResourceKind
from tests.compute import test_browser_notebooks as browser_notebooks
from tests.compute.test_notebooks import Stack
from tests.factories import cpu_project
from tests.journeys import test_browser as harness
from tests.journeys.test_browser import EIDAS, add_person, assert_accessible, log_in, portal_errors

pytestmark = [pytest.mark.browser, pytest.mark.hub]

browser = harness.browser
new_page = harness.new_page
stack = browser_notebooks.stack

SLOW_MS = 60_000


def test_a_teacher_creates_a_course_a_student_joins_launches_and_the_teacher_sees_the_use(
    stack: Stack, oidc_provider, new_page
) -> None:
    portal_url = stack.portal_url
    teacher_sub, teacher_email = add_person(oidc_provider, "Tiina", "Opetaja", acr=EIDAS + "substantial")
    teacher = new_page()
    errors = portal_errors(teacher, portal_url)
    log_in(teacher, portal_url, oidc_provider, "eIDAS", teacher_sub)
    with Session(stack.app.extensions["portal.engine"], expire_on_commit=False) as db:
        tiina = db.exec(select(User).where(User.email == teacher_email)).one()
        _world, _project, _allocation = cpu_project(
            db, tiina, hours=100, title="Teaching Dask", organisation="Tartu Ülikool", country="EE"
        )

    # The teacher creates the course: 4 core-hours each, 10 seats, the CPU profile.
    teacher.goto(f"{portal_url}/")
    teacher.get_by_role("link", name="Courses", exact=True).click()
    teacher.wait_for_url(f"{portal_url}/courses")
    assert_accessible(teacher, "courses")
    teacher.get_by_role("link", name="Create a course").click()
    teacher.wait_for_url(f"{portal_url}/courses/new")
    assert_accessible(teacher, "new course form")
    today = utcnow().date()
    teacher.get_by_label("Course title").fill("Parallel Python")
    teacher.get_by_label("Term starts on").fill(today.isoformat())
    teacher.get_by_label("Term ends on (exclusive)").fill((today + timedelta(days=14)).isoformat())
    teacher.get_by_label("Hours per student").fill("4")
    teacher.get_by_label("Seats").fill("10")
    assert teacher.get_by_label("CPU only: 2 cores, 4 GB").is_checked()
    teacher.get_by_role("button", name="Create course").click()
    teacher.wait_for_url(re.compile(rf"{re.escape(portal_url)}/courses/\d+$"))
    course_url = teacher.url
    code = teacher.locator("#join-code").inner_text()
    assert re.fullmatch(r"[A-Z2-9]{10}", code)
    assert teacher.locator("#seats").inner_text() == "0 / 10"
    assert teacher.locator("#course-remaining").inner_text() == "40.00 core-hours"
    assert_accessible(teacher, "teacher dashboard, empty")

    # The student logs in through the provider, follows the join link and launches a notebook.
    student_sub, student_email = add_person(oidc_provider, "Sten", "Tudeng", acr=EIDAS + "low")
    student = new_page()
    student_errors = portal_errors(student, portal_url)
    log_in(student, portal_url, oidc_provider, "eIDAS", student_sub)
    student.goto(f"{portal_url}/courses/join?code={code}")
    assert student.get_by_label("Join code").input_value() == code
    student.get_by_role("button", name="Join", exact=True).click()
    student.wait_for_url(course_url)
    assert "You joined the course." in student.locator(".flashes").inner_text()
    assert student.locator("#my-left").inner_text() == "4.00 core-hours"
    assert_accessible(student, "student's course page")
    student.get_by_label("Profile").select_option(label="CPU only: 2 cores, 4 GB")
    student.get_by_label("Maximum duration (hours)").fill("1")
    student.get_by_role("button", name="Launch").click()
    student.wait_for_url(re.compile(rf"{re.escape(portal_url)}/notebooks/\d+$"))
    student.get_by_role("link", name="Open the notebook").wait_for(timeout=SLOW_MS)

    with Session(stack.app.extensions["portal.engine"], expire_on_commit=False) as db:
        sten = db.exec(select(User).where(User.email == student_email)).one()
        seat = db.exec(select(CourseSeat).where(CourseSeat.user_id == sten.id)).one()
        # the first round sees the server ready; the second charges its running time (as of 5 minutes on)
        assert meter_notebooks(db, stack.settings, stack.client).started != []
        report = meter_notebooks(db, stack.settings, stack.client, utcnow() + timedelta(minutes=5))
        assert report.charged and not report.stopped
        db.refresh(seat)
        assert seat.used >= 2 * 300
        used = quantity(seat.used, ResourceKind.CPU, places=2)

    # The teacher's dashboard shows the student, their use, the running notebook and the remaining hours.
    teacher.reload()
    assert teacher.locator("#seats").inner_text() == "1 / 10"
    row = teacher.locator("#students").get_by_role("row").filter(has_text="Sten Tudeng")
    assert used in row.inner_text() and "4.0 core-hours" in row.inner_text()
    assert teacher.locator("#course-used").inner_text() == used
    assert "Sten Tudeng" in teacher.get_by_role("region", name="Running notebooks").inner_text()
    assert teacher.locator("#course-chart canvas").count() == 1  # the chart is drawn
    assert_accessible(teacher, "teacher dashboard with a student")
    student.goto(course_url)
    assert student.locator("#my-used").inner_text() == used
    assert "Tiina" not in student.content() and code not in student.content()

    assert errors == [] and student_errors == []
