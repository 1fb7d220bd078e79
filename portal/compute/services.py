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
- **where it runs** (``HubBackend``, which the hub reports with each check): a hub that runs servers on its
  own machine starts a GPU profile only where that machine has the profile's GPUs (never a "1 × H100"
  server without an H100); a hub that runs servers as Slurm jobs starts them only for allocations of the
  cluster's site whose Slurm account ``portal slurm sync`` has made, and is told the job to submit
  (``SlurmJob``: account, partition, GPUs, cores, memory, time limit). Such a server is charged once, from
  sacct, never by the portal's metering.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from portal.classroom.models import Course, CourseSeat, CourseState
from portal.classroom.services import course_spawn_refusal, hours_promised, student_seat
from portal.config import NotebookProfile, Settings, SlurmClusterConfig
from portal.db import find, utcnow
from portal.errors import NotAuthorised
from portal.identity.models import User
from portal.ledger import wording
from portal.ledger.models import Allocation, AllocationSource, AllocationState, Resource, ResourceKind, Site
from portal.messages import N_, Amount, Message
from portal.metering.models import SlurmAccount
from portal.notebook_models import NotebookSession
from portal.projects.models import ProjectMembership

HUB_NAME = re.compile(r"^u([1-9][0-9]{0,17})$")
OPTION_KEYS = frozenset({"allocation", "profile", "hours"})
START_FROM_PORTAL = N_(
    "Start notebooks in the portal, whose “My sessions” page (%(portal)s/notebooks) lists the projects and courses "
    "you can start one from, with an allocation and a profile."
)
#: Why nothing runs on an allocation in each state (an active one: its balance is spent).
_NOTHING_RUNS = {
    AllocationState.PENDING: N_("Allocation %(title)s is pending, so nothing can run on it."),
    AllocationState.ACTIVE: N_("Allocation %(title)s is active, so nothing can run on it."),
    AllocationState.EXHAUSTED: N_("Allocation %(title)s is exhausted, so nothing can run on it."),
    AllocationState.EXPIRED: N_("Allocation %(title)s is expired, so nothing can run on it."),
    AllocationState.SUSPENDED: N_("Allocation %(title)s is suspended, so nothing can run on it."),
    AllocationState.AWAITING_PAYMENT: N_("Allocation %(title)s is awaiting_payment, so nothing can run on it."),
}


class SpawnRefused(NotAuthorised):
    title = "Spawn refused"


def nothing_runs_on(allocation: Allocation) -> Message:
    """Why no notebook starts on ``allocation``, which is not active or has no hours left."""
    return Message(_NOTHING_RUNS[AllocationState(allocation.state)], title=wording.title_of(allocation, quoted=True))


def notebook_url(hub_url: str, found: NotebookSession) -> str:
    """Where the notebook opens: its server's own address, which sends the browser on to the server's default
    page (the first notebook at a user's first start, hub_config/first_notebook.py; JupyterLab after that)."""
    return f"{hub_url}/user/{found.hub_user}/{found.server_name}/"


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
class HubBackend:
    """Where the hub runs notebook servers, as it reports with each spawn check."""

    #: The Slurm cluster whose jobs the servers are; None: the hub's own machine.
    slurm_cluster: str | None = None
    #: On the hub's own machine: its GPUs' names (``nvidia-smi``'s, e.g. "NVIDIA H100 80GB HBM3"), one per GPU.
    local_gpus: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.slurm_cluster:
            return f"Slurm cluster {self.slurm_cluster}"
        return "the hub's own machine"


def hub_backend(settings: Settings) -> HubBackend:
    """The backend the settings say the hub has (what the start form offers; the hub's own report decides)."""
    if settings.hub_slurm_cluster:
        return HubBackend(slurm_cluster=settings.hub_slurm_cluster)
    return HubBackend(local_gpus=tuple(settings.hub_local_gpus))


def missing_gpus(profile: NotebookProfile, backend: HubBackend) -> str | None:
    """Why ``profile`` cannot run on ``backend`` for want of GPUs, or None. A Slurm cluster's partitions are
    its own business: a job asking for GPUs it lacks is refused by ``sbatch``, in words the hub shows."""
    if profile.gpus == 0 or backend.slurm_cluster:
        return None
    model = (profile.gpu_model or "").casefold()
    matching = [name for name in backend.local_gpus if model and model in name.casefold()]
    if len(matching) >= profile.gpus:
        return None
    has = ", ".join(backend.local_gpus) if backend.local_gpus else "no GPU"
    return (
        f"The {profile.label} profile needs {profile.gpus} {profile.gpu_model} GPU"
        f"{'s' if profile.gpus > 1 else ''}, but this hub runs notebooks on its own machine, which has {has}. "
        "GPU notebooks run on the factory cluster; choose the CPU profile here."
    )


@dataclass(frozen=True)
class SlurmJob:
    """The batch job the hub submits for an accepted spawn on a Slurm cluster."""

    cluster: str
    #: The allocation's account (``<site>-<allocation id>``), made by ``portal slurm sync``.
    account: str
    #: The resource's partition; empty: the cluster's default.
    partition: str
    gpus: int
    cpus: int
    memory_mb: int
    #: Slurm's ``--time``: the hours asked for, in whole minutes (rounded down, at least 1).
    time_minutes: int
    #: ``portal-nb-<session id>``: sacct and squeue name the portal's session.
    job_name: str


def _slurm_account(
    db: Session, settings: Settings, cluster_name: str, allocation: Allocation, resource: Resource
) -> tuple[SlurmClusterConfig, str, str]:
    """The cluster, account and partition a Slurm-run server of ``allocation`` uses, or ``SpawnRefused``."""
    cluster = settings.slurm_cluster(cluster_name)
    if cluster is None:
        raise SpawnRefused(
            Message(
                N_(
                    "The hub runs notebooks on the Slurm cluster %(cluster)s, which the portal does not know; "
                    "an operator must add it to the portal's slurm_clusters."
                ),
                cluster=repr(cluster_name),
            )
        )
    site = db.get(Site, resource.site_id)
    assert site is not None
    if site.code != cluster.site:
        raise SpawnRefused(
            Message(
                N_(
                    "Allocation %(title)s holds hours at %(site)s, but this hub runs notebooks on the "
                    "cluster %(cluster)s of another site: start it from that site's hub."
                ),
                title=wording.title_of(allocation, quoted=True),
                site=site.name,
                cluster=cluster.name,
            )
        )
    account = db.exec(
        select(SlurmAccount.account)
        .where(SlurmAccount.cluster == cluster.name, SlurmAccount.allocation_id == allocation.id)
        .order_by(col(SlurmAccount.id))
    ).first()
    if account is None:
        raise SpawnRefused(
            Message(
                N_(
                    "Allocation %(title)s has no account on the cluster %(cluster)s yet; the portal creates "
                    "it within a few minutes of the allocation's start. Please try again shortly."
                ),
                title=wording.title_of(allocation, quoted=True),
                cluster=cluster.name,
            )
        )
    return cluster, account, cluster.partitions.get(resource.code, "")


@dataclass(frozen=True)
class SpawnDecision:
    """What the hub's spawner is told for an accepted spawn."""

    session: NotebookSession
    allocation: Allocation
    profile: NotebookProfile
    max_seconds: int
    #: The course when a student spawns on a course's allocation.
    course: Course | None = None
    #: The batch job to submit, when the hub runs servers on a Slurm cluster.
    slurm: SlurmJob | None = None

    @property
    def environment(self) -> dict[str, str]:
        environment = {
            "PORTAL_ALLOCATION": str(self.allocation.id),
            "PORTAL_PROJECT": str(self.allocation.project_id),
            "PORTAL_PROFILE": self.profile.name,
            "PORTAL_MAX_SECONDS": str(self.max_seconds),
            "PORTAL_NOTEBOOK_SESSION": str(self.session.id),
        }
        if self.slurm is None:  # on a cluster, Slurm sets CUDA_VISIBLE_DEVICES to the GPUs the job holds
            environment["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(self.profile.gpus))
        else:
            environment["PORTAL_SLURM_CLUSTER"] = self.slurm.cluster
            environment["PORTAL_SLURM_ACCOUNT"] = self.slurm.account
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


def _read_options(options: Any, portal_url: str) -> tuple[int, str, float]:
    start_here = Message(START_FROM_PORTAL, portal=portal_url)
    if not isinstance(options, dict) or not options:
        raise SpawnRefused(start_here)
    extra = sorted(set(options) - OPTION_KEYS)
    if extra:
        raise SpawnRefused(
            Message(
                N_("The server options contain %(keys)s, which the portal does not set."),
                keys=", ".join(map(repr, extra)),
            )
            + start_here
        )
    missing = sorted(OPTION_KEYS - set(options))
    if missing:
        raise SpawnRefused(Message(N_("The server options lack %(keys)s."), keys=", ".join(missing)) + start_here)
    allocation, profile, hours = options["allocation"], options["profile"], options["hours"]
    if not isinstance(allocation, int) or isinstance(allocation, bool):
        raise SpawnRefused(Message(N_("The server options name no valid allocation (a number is expected).")))
    if not isinstance(profile, str) or not profile:
        raise SpawnRefused(Message(N_("The server options name no valid profile.")))
    if not isinstance(hours, int | float) or isinstance(hours, bool) or abs(hours) > LONGEST_NOTEBOOK_HOURS:
        raise SpawnRefused(Message(N_("The server options give no valid number of hours.")))
    if not math.isfinite(hours):
        raise SpawnRefused(Message(N_("The server options give no valid number of hours.")))
    return allocation, profile, float(hours)


def profile_misfit(profile: NotebookProfile, resource: Resource) -> Message | None:
    """Why ``profile`` does not run on an allocation of ``resource``, or None when it does."""
    if profile.gpus > 0:
        if resource.kind != ResourceKind.GPU:
            return Message(
                N_(
                    "The profile %(profile)s needs GPUs, but the allocation is for %(resource)s. "
                    "Choose a CPU profile or a GPU allocation."
                ),
                profile=profile.label,
                resource=resource.name,
            )
        if (resource.gpu_model or "").casefold() != (profile.gpu_model or "").casefold():
            if not resource.gpu_model:
                return Message(
                    N_(
                        "The profile %(profile)s runs on %(model)s GPUs, but the allocation is for GPUs of "
                        "another model. Choose a profile with the allocation's GPUs."
                    ),
                    profile=profile.label,
                    model=profile.gpu_model,
                )
            return Message(
                N_(
                    "The profile %(profile)s runs on %(model)s GPUs, but the allocation is for %(has)s GPUs. "
                    "Choose a profile with %(has)s GPUs."
                ),
                profile=profile.label,
                model=profile.gpu_model,
                has=resource.gpu_model,
            )
        return None
    if resource.kind != ResourceKind.CPU:
        return Message(_CPU_ONLY[ResourceKind(resource.kind)], profile=profile.label)
    return None


_CPU_ONLY = {
    ResourceKind.GPU: N_(
        "The profile %(profile)s runs on CPUs only, which a gpu allocation does not pay for. "
        "Choose a GPU profile or a CPU allocation."
    ),
    ResourceKind.STORAGE: N_(
        "The profile %(profile)s runs on CPUs only, which a storage allocation does not pay for. "
        "Choose a GPU profile or a CPU allocation."
    ),
}


def _units_per_second(profile: NotebookProfile, resource: Resource) -> int:
    """Base units the server uses per second of running: its GPUs, or its cores for a CPU profile."""
    misfit = profile_misfit(profile, resource)
    if misfit:
        raise SpawnRefused(misfit)
    return profile.gpus or profile.cpus


@dataclass(frozen=True)
class ProfileChoice:
    """A profile as the start form offers it for one allocation."""

    profile: NotebookProfile
    #: Why it cannot start here (no such GPU on the hub's machine), or None.
    unavailable: str | None


def profile_choices(settings: Settings, resource: Resource) -> list[ProfileChoice]:
    """The profiles that run on allocations of ``resource``, those this hub can start first."""
    backend = hub_backend(settings)
    choices = [
        ProfileChoice(profile, missing_gpus(profile, backend))
        for profile in settings.notebook_profiles
        if profile_misfit(profile, resource) is None
    ]
    return sorted(choices, key=lambda choice: choice.unavailable is not None)


def check_spawn(
    db: Session,
    settings: Settings,
    hub_user: str,
    server_name: str,
    options: Any,
    backend: HubBackend | None = None,
) -> SpawnDecision:
    """Decide whether ``hub_user`` may start ``server_name`` with ``options`` on ``backend`` (where the hub runs
    servers, as the hub reports it; None: not checked, for callers that place the server themselves); record an
    accepted spawn."""
    user = user_for_hub_name(db, hub_user)
    if user is None:
        raise SpawnRefused(_not_a_user(hub_user))
    allocation_id, profile_name, hours = _read_options(options, settings.base_url)

    allocation = find(db, Allocation, allocation_id)
    if allocation is not None:
        # Held until the session is recorded: two spawns at once cannot both be promised the same hours.
        db.refresh(allocation, with_for_update=True)
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
        raise SpawnRefused(
            Message(N_("Allocation %(id)s is not one of your projects' allocations."), id=str(allocation_id))
        )
    if allocation.source == AllocationSource.COURSE and seat is None:
        raise SpawnRefused(
            Message(
                N_("Allocation %(title)s holds a course's hours: only its students start notebooks."),
                title=wording.title_of(allocation, quoted=True),
            )
        )
    now = utcnow()
    if allocation.state != AllocationState.ACTIVE or allocation.balance <= 0:
        raise SpawnRefused(nothing_runs_on(allocation))
    if not allocation.starts_at <= now < allocation.ends_at:
        raise SpawnRefused(
            Message(
                N_("Allocation %(title)s is not open now (its dates have passed or not begun)."),
                title=wording.title_of(allocation, quoted=True),
            )
        )

    profile = settings.notebook_profile(profile_name)
    if profile is None:
        raise SpawnRefused(Message(N_("There is no notebook profile %(profile)s."), profile=repr(profile_name)))
    resource = db.get(Resource, allocation.resource_id)
    assert resource is not None
    per_second = _units_per_second(profile, resource)
    no_gpu = missing_gpus(profile, backend) if backend is not None else None
    if no_gpu:
        raise SpawnRefused(no_gpu)
    slurm_place = (
        _slurm_account(db, settings, backend.slurm_cluster, allocation, resource)
        if backend is not None and backend.slurm_cluster
        else None
    )

    if hours <= 0:
        raise SpawnRefused(Message(N_("Ask for a positive number of hours.")))
    max_seconds = int(hours * 3600)
    # what running notebooks may still use (a Slurm job, charged only when it ends, for all its hours)
    promised = hours_promised(db, allocation_id=allocation.id, replacing=(hub_user, server_name))
    affordable = max(0, allocation.balance - promised) // per_second
    if max_seconds > affordable:
        values = {
            "hours": f"{hours:g}",
            "profile": profile.label,
            "need": Amount(max_seconds * per_second, resource.kind),
            "left": Amount(allocation.balance, resource.kind),
            "most": f"{math.floor(affordable / 36) / 100:g}",
        }
        if promised:
            raise SpawnRefused(
                Message(
                    N_(
                        "%(hours)s hours of %(profile)s need %(need)s, but the allocation has %(left)s left, of "
                        "which %(promised)s are promised to running notebooks: ask for at most %(most)s hours."
                    ),
                    promised=Amount(promised, resource.kind),
                    **values,
                )
            )
        raise SpawnRefused(
            Message(
                N_(
                    "%(hours)s hours of %(profile)s need %(need)s, but the allocation has %(left)s left: "
                    "ask for at most %(most)s hours."
                ),
                **values,
            )
        )
    until_end = int((allocation.ends_at - now).total_seconds())
    if max_seconds > until_end:
        raise SpawnRefused(
            Message(
                N_("The allocation ends in %(left)s hours; ask for at most %(most)s hours."),
                left=f"{until_end / 3600:.2f}",
                most=f"{math.floor(until_end / 36) / 100:g}",
            )
        )
    if max_seconds < 1:
        raise SpawnRefused(Message(N_("Ask for at least one second.")))
    if seat is not None:
        _check_course_spawn(db, *seat, profile, resource, hub_user, server_name, max_seconds * per_second, now)

    session = NotebookSession(
        user_id=user.id,
        project_id=allocation.project_id,
        allocation_id=allocation.id,
        hub_user=hub_user,
        server_name=server_name,
        profile=profile.name,
        gpus=profile.gpus,
        cpus=profile.cpus,
        max_seconds=max_seconds,
        requested_at=now,
        course_seat_id=seat[1].id if seat else None,
        slurm_cluster=slurm_place[0].name if slurm_place else None,
        slurm_account=slurm_place[1] if slurm_place else None,
    )
    db.add(session)
    db.commit()
    slurm_job = None
    if slurm_place is not None:
        cluster, account, partition = slurm_place
        slurm_job = SlurmJob(
            cluster=cluster.name,
            account=account,
            partition=partition,
            gpus=profile.gpus,
            cpus=profile.cpus,
            memory_mb=profile.memory_gb * 1024,
            time_minutes=max(1, max_seconds // 60),
            job_name=f"portal-nb-{session.id}",
        )
    return SpawnDecision(
        session=session,
        allocation=allocation,
        profile=profile,
        max_seconds=max_seconds,
        course=seat[0] if seat else None,
        slurm=slurm_job,
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
        raise SpawnRefused(Message(N_("Your teacher removed you from the course “%(title)s”."), title=course.title))
    if course.state != CourseState.OPEN or now >= course.ends_at:
        raise SpawnRefused(Message(N_("The course “%(title)s” is closed."), title=course.title))
    if now < course.starts_at:
        raise SpawnRefused(
            Message(
                N_("The course “%(title)s” begins on %(day)s."),
                title=course.title,
                day=course.starts_at.date(),
            )
        )
    if profile.name not in course.profiles:
        raise SpawnRefused(
            Message(
                N_("The course “%(title)s” allows only these profiles: %(profiles)s."),
                title=course.title,
                profiles=", ".join(course.profiles),
            )
        )
    promised = hours_promised(db, seat_id=seat.id, replacing=(hub_user, server_name))
    left = seat.cap - seat.used - promised
    if left <= 0:
        used = (
            N_("You have used your cap of %(cap)s in “%(title)s” (counting your running notebooks).")
            if promised
            else N_("You have used your cap of %(cap)s in “%(title)s”. Ask your teacher for more.")
        )
        raise SpawnRefused(Message(used, cap=Amount(seat.cap, resource.kind), title=course.title))
    if amount > left:
        per_second = profile.gpus or profile.cpus
        raise SpawnRefused(
            Message(
                N_("Your course cap leaves you %(left)s: ask for at most %(most)s hours."),
                left=Amount(left, resource.kind),
                most=f"{math.floor(left / per_second / 36) / 100:g}",
            )
        )
    # The course's own hours too: what its allocation holds after every running notebook's promise (the course
    # allocation's row stays locked until this session is recorded); never a member of the teacher's project.
    refusal = course_spawn_refusal(
        db,
        course,
        seat,
        amount,
        per_second=profile.gpus or profile.cpus,
        kind=resource.kind,
        replacing=(hub_user, server_name),
    )
    if refusal is not None:
        raise SpawnRefused(refusal)


def _not_a_user(hub_user: str) -> Message:
    return Message(N_("The hub user %(name)s is not an active user of the portal."), name=repr(hub_user))


#: The most Dask Gateway workers one notebook's cluster may have.
MAX_GATEWAY_WORKERS = 16


@dataclass(frozen=True)
class GatewayDecision:
    """What Dask Gateway is told for a notebook's Dask cluster: its Slurm jobs run under the notebook's account."""

    session: int
    allocation: int
    cluster: str
    account: str
    partition: str
    worker_gpus: int
    worker_cores: int
    worker_memory_gb: int
    #: As many workers as the balance keeps running for an hour, at most ``MAX_GATEWAY_WORKERS``.
    max_workers: int


def check_gateway(db: Session, settings: Settings, hub_user: str, session_id: int) -> GatewayDecision:
    """May ``hub_user`` start a Dask cluster for notebook session ``session_id``? Only the session's owner,
    while it runs as a Slurm job and its allocation has hours left; the workers are sized from its profile
    (one GPU each on a GPU profile, one core each otherwise)."""
    user = user_for_hub_name(db, hub_user)
    if user is None:
        raise SpawnRefused(_not_a_user(hub_user))
    session = find(db, NotebookSession, session_id)
    if session is None or session.user_id != user.id:
        raise SpawnRefused(Message(N_("Notebook session %(id)s is not one of yours."), id=str(session_id)))
    if session.stopped_at is not None:
        raise SpawnRefused(
            Message(
                N_("Notebook session %(id)s has stopped (%(reason)s)."), id=str(session_id), reason=session.stop_reason
            )
        )
    if session.slurm_cluster is None or session.slurm_account is None:
        raise SpawnRefused(
            Message(
                N_(
                    "Notebook session %(id)s runs on the hub's own machine, not on the factory cluster: "
                    "use the notebook's local Dask cluster."
                ),
                id=str(session_id),
            )
        )
    allocation = db.get(Allocation, session.allocation_id)
    assert allocation is not None
    if allocation.state != AllocationState.ACTIVE or allocation.balance <= 0:
        raise SpawnRefused(nothing_runs_on(allocation))
    resource = db.get(Resource, allocation.resource_id)
    assert resource is not None
    profile = settings.notebook_profile(session.profile)
    cluster = settings.slurm_cluster(session.slurm_cluster)
    if profile is None or cluster is None:
        raise SpawnRefused(
            Message(N_("Notebook session %(id)s's profile or cluster is no longer offered."), id=str(session_id))
        )
    if session.gpus > 0:
        worker_gpus, cores, memory = 1, max(1, session.cpus // session.gpus), profile.memory_gb // session.gpus
    else:
        worker_gpus, cores, memory = 0, 1, profile.memory_gb // max(1, session.cpus)
    per_worker_hour = (worker_gpus or cores) * 3600
    return GatewayDecision(
        session=session_id,
        allocation=allocation.id,
        cluster=cluster.name,
        account=session.slurm_account,
        partition=cluster.partitions.get(resource.code, ""),
        worker_gpus=worker_gpus,
        worker_cores=cores,
        worker_memory_gb=max(1, memory),
        max_workers=max(1, min(MAX_GATEWAY_WORKERS, allocation.balance // per_worker_hour)),
    )
