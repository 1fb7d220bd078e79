"""Who may start which notebook server: the rules the hub's spawner enforces by asking the portal.

Hub user names are ``u<user id>`` (``u42``): stable across renames and e-mail changes, and safe for
JupyterHub (lower case letters and digits). ``hub_username`` and ``user_for_hub_name`` are the only
places that know the scheme.

Rules of ``check_spawn`` (each refusal is a ``SpawnRefused`` with a reason the hub shows the user):

- the hub user is an active portal user;
- ``user_options`` are exactly ``allocation`` (int), ``profile`` (str) and ``hours`` (number): missing or
  empty options mean the server was started from the hub's own page, and any other key (``gpus``, ...)
  is refused as tampering;
- the allocation exists and belongs to a project the user is a member of (otherwise it is reported as
  not found, so nobody learns about another project's allocations); it is ACTIVE, has a positive balance
  and ``now`` lies within its dates;
- the profile exists; a GPU profile needs a GPU allocation whose resource has the profile's ``gpu_model``;
  a CPU profile needs a CPU allocation (decided: a GPU allocation pays for GPUs, so it does not run
  CPU-only servers; its owners pick the smallest GPU profile instead); storage allocations run nothing;
- ``hours`` is > 0, at most the balance expressed in hours for the profile (GPU-seconds / GPUs, or
  core-seconds / cores for a CPU profile), and the server would end before the allocation does.
- on a course's allocation (source ``course``) only the course's students spawn, not the teacher's project
  members: the student is not removed, the course is open and within its term, the profile is one the
  course allows, and the hours fit what the student's cap leaves after their other running notebooks.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from portal.classroom.models import Course, CourseSeat, CourseState
from portal.classroom.services import student_seat
from portal.compute.models import NotebookSession
from portal.config import NotebookProfile, Settings
from portal.db import find, utcnow
from portal.errors import NotAuthorised
from portal.formatting import quantity
from portal.identity.models import User
from portal.ledger.models import Allocation, AllocationSource, AllocationState, Resource, ResourceKind
from portal.projects.models import ProjectMembership

HUB_NAME = re.compile(r"^u([1-9][0-9]{0,17})$")
OPTION_KEYS = frozenset({"allocation", "profile", "hours"})
START_FROM_PORTAL = "Start notebooks from the portal's Notebooks page, which chooses an allocation and a profile."


class SpawnRefused(NotAuthorised):
    title = "Spawn refused"


def hub_username(user: User) -> str:
    """The user's name at the hub."""
    return f"u{user.id}"


def user_for_hub_name(db: Session, name: str) -> User | None:
    match = HUB_NAME.match(name or "")
    if not match:
        return None
    user = find(db, User, int(match.group(1)))
    return user if user is not None and user.is_active else None


@dataclass(frozen=True)
class SpawnDecision:
    """What the hub's spawner is told for an accepted spawn."""

    session: NotebookSession
    allocation: Allocation
    profile: NotebookProfile
    max_seconds: int
    #: The course when a student spawns on a course's allocation.
    course: Course | None = None

    @property
    def environment(self) -> dict[str, str]:
        environment = {
            "PORTAL_ALLOCATION": str(self.allocation.id),
            "PORTAL_PROJECT": str(self.allocation.project_id),
            "PORTAL_PROFILE": self.profile.name,
            "PORTAL_MAX_SECONDS": str(self.max_seconds),
            "PORTAL_NOTEBOOK_SESSION": str(self.session.id),
            "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(self.profile.gpus)),
        }
        if self.course is not None:
            environment["PORTAL_COURSE"] = str(self.course.id)
            if self.course.materials_url:
                environment["PORTAL_COURSE_MATERIALS"] = self.course.materials_url
        return environment

    @property
    def cpu_limit(self) -> float:
        return float(self.profile.cpus)

    @property
    def mem_limit(self) -> str:
        return f"{self.profile.memory_gb}G"


#: Longer than any allocation lasts: a number of hours beyond it is no request but garbage.
LONGEST_NOTEBOOK_HOURS = 24 * 366


def _read_options(options: Any) -> tuple[int, str, float]:
    if not isinstance(options, dict) or not options:
        raise SpawnRefused(START_FROM_PORTAL)
    extra = sorted(set(options) - OPTION_KEYS)
    if extra:
        raise SpawnRefused(
            f"The server options contain {', '.join(map(repr, extra))}, which the portal does not set. "
            + START_FROM_PORTAL
        )
    missing = sorted(OPTION_KEYS - set(options))
    if missing:
        raise SpawnRefused(f"The server options lack {', '.join(missing)}. " + START_FROM_PORTAL)
    allocation, profile, hours = options["allocation"], options["profile"], options["hours"]
    if not isinstance(allocation, int) or isinstance(allocation, bool):
        raise SpawnRefused("The server options name no valid allocation (a number is expected).")
    if not isinstance(profile, str) or not profile:
        raise SpawnRefused("The server options name no valid profile.")
    if not isinstance(hours, int | float) or isinstance(hours, bool) or abs(hours) > LONGEST_NOTEBOOK_HOURS:
        raise SpawnRefused("The server options give no valid number of hours.")
    if not math.isfinite(hours):
        raise SpawnRefused("The server options give no valid number of hours.")
    return allocation, profile, float(hours)


def _units_per_second(profile: NotebookProfile, resource: Resource) -> int:
    """Base units the server uses per second of running: its GPUs, or its cores for a CPU profile."""
    if profile.gpus > 0:
        if resource.kind != ResourceKind.GPU:
            raise SpawnRefused(
                f"The profile {profile.label} needs GPUs, but the allocation is for {resource.name}. "
                "Choose a CPU profile or a GPU allocation."
            )
        if (resource.gpu_model or "").casefold() != (profile.gpu_model or "").casefold():
            raise SpawnRefused(
                f"The profile {profile.label} runs on {profile.gpu_model} GPUs, but the allocation is for "
                f"{resource.gpu_model or 'another'} GPUs. Choose a profile with {resource.gpu_model} GPUs."
            )
        return profile.gpus
    if resource.kind != ResourceKind.CPU:
        raise SpawnRefused(
            f"The profile {profile.label} runs on CPUs only, which a {resource.kind} allocation does not pay for. "
            "Choose a GPU profile or a CPU allocation."
        )
    return profile.cpus


def check_spawn(db: Session, settings: Settings, hub_user: str, server_name: str, options: Any) -> SpawnDecision:
    """Decide whether ``hub_user`` may start ``server_name`` with ``options``; record an accepted spawn."""
    user = user_for_hub_name(db, hub_user)
    if user is None:
        raise SpawnRefused(f"The hub user {hub_user!r} is not an active user of the portal.")
    allocation_id, profile_name, hours = _read_options(options)

    allocation = find(db, Allocation, allocation_id)
    seat = student_seat(db, user, allocation_id) if allocation is not None else None
    member = seat is not None or (
        allocation is not None
        and db.exec(
            select(ProjectMembership.id).where(
                ProjectMembership.project_id == allocation.project_id, ProjectMembership.user_id == user.id
            )
        ).first()
        is not None
    )
    if allocation is None or not member:
        raise SpawnRefused(f"Allocation {allocation_id} is not one of your projects' allocations.")
    if allocation.source == AllocationSource.COURSE and seat is None:
        raise SpawnRefused(
            f"Allocation {allocation.title!r} holds a course's hours: only its students start notebooks."
        )
    now = utcnow()
    if allocation.state != AllocationState.ACTIVE or allocation.balance <= 0:
        raise SpawnRefused(f"Allocation {allocation.title!r} is {allocation.state}, so nothing can run on it.")
    if not allocation.starts_at <= now < allocation.ends_at:
        raise SpawnRefused(f"Allocation {allocation.title!r} is not open now (its dates have passed or not begun).")

    profile = settings.notebook_profile(profile_name)
    if profile is None:
        raise SpawnRefused(f"There is no notebook profile {profile_name!r}.")
    resource = db.get(Resource, allocation.resource_id)
    assert resource is not None
    per_second = _units_per_second(profile, resource)

    if hours <= 0:
        raise SpawnRefused("Ask for a positive number of hours.")
    max_seconds = int(hours * 3600)
    affordable = allocation.balance // per_second
    if max_seconds > affordable:
        raise SpawnRefused(
            f"{hours:g} hours of {profile.label} need {quantity(max_seconds * per_second, resource.kind)}, "
            f"but the allocation has {quantity(allocation.balance, resource.kind)} left: "
            f"ask for at most {math.floor(affordable / 36) / 100:g} hours."
        )
    until_end = int((allocation.ends_at - now).total_seconds())
    if max_seconds > until_end:
        raise SpawnRefused(
            f"The allocation ends in {until_end / 3600:.2f} hours; ask for at most "
            f"{math.floor(until_end / 36) / 100:g} hours."
        )
    if max_seconds < 1:
        raise SpawnRefused("Ask for at least one second.")
    if seat is not None:
        _check_course_spawn(db, *seat, profile, resource, hub_user, server_name, max_seconds * per_second, now)

    session = NotebookSession(
        user_id=user.id,  # type: ignore[arg-type]
        project_id=allocation.project_id,
        allocation_id=allocation.id,  # type: ignore[arg-type]
        hub_user=hub_user,
        server_name=server_name,
        profile=profile.name,
        gpus=profile.gpus,
        cpus=profile.cpus,
        max_seconds=max_seconds,
        requested_at=now,
        course_seat_id=seat[1].id if seat else None,
    )
    db.add(session)
    db.commit()
    return SpawnDecision(
        session=session,
        allocation=allocation,
        profile=profile,
        max_seconds=max_seconds,
        course=seat[0] if seat else None,
    )


def _check_course_spawn(
    db: Session,
    course: Course,
    seat: CourseSeat,
    profile: NotebookProfile,
    resource: Resource,
    hub_user: str,
    server_name: str,
    amount: int,
    now: datetime,
) -> None:
    """A student on a course's allocation: seated, course open, an allowed profile, and ``amount`` within what
    the cap leaves after the student's other running notebooks (each counted for the hours it may still run)."""
    if seat.removed_at is not None:
        raise SpawnRefused(f"Your teacher removed you from the course “{course.title}”.")
    if course.state != CourseState.OPEN or now >= course.ends_at:
        raise SpawnRefused(f"The course “{course.title}” is closed.")
    if now < course.starts_at:
        raise SpawnRefused(f"The course “{course.title}” begins on {course.starts_at:%Y-%m-%d}.")
    if profile.name not in course.profiles:
        raise SpawnRefused(f"The course “{course.title}” allows only these profiles: {', '.join(course.profiles)}.")
    others = db.exec(
        select(NotebookSession).where(
            NotebookSession.course_seat_id == seat.id,
            col(NotebookSession.stopped_at).is_(None),
            sa.not_(sa.and_(NotebookSession.hub_user == hub_user, NotebookSession.server_name == server_name)),
        )
    ).all()
    promised = sum((s.max_seconds - s.charged_seconds) * (s.gpus or s.cpus) for s in others)
    left = seat.cap - seat.used - promised
    if left <= 0:
        raise SpawnRefused(
            f"You have used your cap of {quantity(seat.cap, resource.kind)} in “{course.title}”"
            + (" (counting your running notebooks)." if promised else ". Ask your teacher for more.")
        )
    if amount > left:
        per_second = profile.gpus or profile.cpus
        raise SpawnRefused(
            f"Your course cap leaves you {quantity(left, resource.kind)}: "
            f"ask for at most {math.floor(left / per_second / 36) / 100:g} hours."
        )
