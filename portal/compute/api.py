"""``POST /api/v1/hub/spawn-check``: the hub's spawner asks whether a server may start, and with what; and the
notebooks of the token's owner (``/api/v1/notebooks``): list, launch, read, stop, through the same launcher as
the notebook pages."""

from __future__ import annotations

import dataclasses
import functools
import hmac
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from flask import current_app, get_template_attribute, jsonify, request, url_for
from flask_babel import gettext
from markupsafe import Markup
from pydantic import BaseModel, Field
from spectree import Response
from sqlmodel import col, select

from portal import web
from portal.api.core import RETRY_AFTER, Problem, api_user, bp, spec, token_required
from portal.compute import launch
from portal.compute.hub_client import HubClient, HubError, ServerStatus
from portal.compute.services import HubBackend, check_gateway, check_spawn, notebook_url
from portal.db import get_db
from portal.errors import AuthenticationRequired, InvalidInput, NotFound
from portal.identity.models import ApiScope, User
from portal.messages import N_, Message
from portal.notebook_models import NotebookSession
from portal.pagination import MAX_PAGE_SIZE, PAGE_SIZE, KeyColumn, keyset_page


class BackendIn(BaseModel):
    kind: Literal["local", "slurm"] = Field(description="local: the hub's own machine; slurm: Slurm jobs")
    cluster: str | None = Field(default=None, max_length=64, description="kind slurm: the cluster's name")
    gpus: list[str] = Field(
        default_factory=list, max_length=64, description="kind local: the machine's GPU names, one per GPU"
    )

    def to_backend(self) -> HubBackend:
        if self.kind == "slurm":
            if not self.cluster:
                raise InvalidInput(
                    Message(N_("A slurm backend names its cluster.")),
                    errors={"backend.cluster": Message(N_("Required."))},
                )
            return HubBackend(slurm_cluster=self.cluster)
        return HubBackend(local_gpus=tuple(name[:200] for name in self.gpus))


class SlurmJobOut(BaseModel):
    cluster: str
    account: str = Field(description="sbatch --account")
    partition: str = Field(description="sbatch --partition; empty: the cluster's default")
    gpus: int = Field(description="sbatch --gres=gpu:N when N > 0")
    cpus: int = Field(description="sbatch --cpus-per-task")
    memory_mb: int = Field(description="sbatch --mem (MB)")
    time_minutes: int = Field(description="sbatch --time")
    job_name: str = Field(description="sbatch --job-name")


class SpawnCheckIn(BaseModel):
    user: str = Field(min_length=1, max_length=100, description="The hub user name (u<portal user id>)")
    server_name: str = Field(default="", max_length=255, description="The named server; empty for the default one")
    user_options: dict[str, Any] | None = Field(
        default=None,
        description="Exactly {allocation: int, profile: str, hours: number}, as the portal's start form sets them",
    )
    backend: BackendIn | None = Field(
        default=None, description="Where the hub runs servers; absent: its own machine, with no GPU"
    )


class SpawnCheckOut(BaseModel):
    environment: dict[str, str] = Field(
        description="PORTAL_ALLOCATION, PORTAL_PROJECT, PORTAL_PROFILE, PORTAL_MAX_SECONDS, "
        "PORTAL_NOTEBOOK_SESSION, CUDA_VISIBLE_DEVICES"
    )
    cpu_limit: float
    mem_limit: str = Field(description="Memory limit for the spawner, e.g. 4G")
    gpus: int
    max_seconds: int = Field(description="The longest the server may run")
    session_id: int = Field(description="The portal's record of this notebook session")
    slurm: SlurmJobOut | None = Field(default=None, description="The batch job to submit (a slurm backend only)")


def hub_token_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Only the hub, with its service token (``hub_spawn_check_token``), compared in constant time."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        expected = web.settings().hub_spawn_check_token
        kind, _, given = request.headers.get("Authorization", "").partition(" ")
        valid = kind.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode())
        if not (expected and valid):
            raise AuthenticationRequired(Message(N_("Send the hub's service token: 'Authorization: Bearer <token>'.")))
        if not request.is_json:
            raise InvalidInput(Message(N_("Send the request body as application/json.")))
        return view(*args, **kwargs)

    return wrapper


@bp.post("/hub/spawn-check")
@hub_token_required
@spec.validate(
    json=SpawnCheckIn,
    resp=Response(HTTP_200=SpawnCheckOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_422=Problem),
    tags=["hub"],
    security={"bearerAuth": []},
)
def spawn_check():
    """The hub's spawner validates a spawn's options. Authenticated only by the hub's service token
    (`Authorization: Bearer <hub_spawn_check_token>`), not by personal API tokens. 200 gives the environment
    and limits for the spawner; 403 refuses the spawn, saying why in `detail`."""
    body: SpawnCheckIn = request.context.json
    # A hub that does not say where it runs servers is taken to run them on a machine without GPUs.
    backend = body.backend.to_backend() if body.backend is not None else HubBackend()
    decision = check_spawn(get_db(), web.settings(), body.user, body.server_name, body.user_options, backend)
    slurm = decision.slurm
    return jsonify(
        SpawnCheckOut(
            environment=decision.environment,
            cpu_limit=decision.cpu_limit,
            mem_limit=decision.mem_limit,
            gpus=decision.profile.gpus,
            max_seconds=decision.max_seconds,
            session_id=decision.session.id,
            slurm=SlurmJobOut(**dataclasses.asdict(slurm)) if slurm is not None else None,
        ).model_dump()
    )


class GatewayCheckIn(BaseModel):
    user: str = Field(min_length=1, max_length=100, description="The hub user name (u<portal user id>)")
    session: int = Field(ge=1, le=2**62, description="The notebook session (PORTAL_NOTEBOOK_SESSION in the kernel)")


class GatewayCheckOut(BaseModel):
    session: int
    allocation: int
    cluster: str
    account: str = Field(description="sbatch --account for the scheduler and every worker")
    partition: str = Field(description="sbatch --partition; empty: the cluster's default")
    worker_gpus: int = Field(description="GPUs per worker (--gres=gpu:N, dask-cuda workers when > 0)")
    worker_cores: int
    worker_memory_gb: int
    max_workers: int


@bp.post("/hub/gateway-check")
@hub_token_required
@spec.validate(
    json=GatewayCheckIn,
    resp=Response(HTTP_200=GatewayCheckOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_422=Problem),
    tags=["hub"],
    security={"bearerAuth": []},
)
def gateway_check():
    """Dask Gateway asks whether a hub user may start a Dask cluster for a notebook session, and on which
    Slurm account. Authenticated like the spawn check (the hub's service token). 403 refuses, saying why."""
    body: GatewayCheckIn = request.context.json
    decision = check_gateway(get_db(), web.settings(), body.user, body.session)
    return jsonify(GatewayCheckOut(**dataclasses.asdict(decision)).model_dump())


# --- the token owner's notebooks -----------------------------------------------------------------------------

NOTEBOOK_TAGS = ["notebooks"]


class HubProblemResponse(Response):
    """Answers that may be 503 because the notebook hub is unreachable: documented with ``Retry-After``."""

    def generate_spec(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        responses = super().generate_spec(*args, **kwargs)
        responses["503"] = {
            "description": "Service Unavailable: the notebook hub (or the database) cannot be reached",
            "headers": RETRY_AFTER,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        return responses


#: The description of ``stop_reason_shown``.
STOP_REASON_SHOWN = (
    "Why it stopped, in the sentence the notebook's page shows, in the language of `Accept-Language`; empty while "
    "it runs"
)


def stop_reason_shown(reason: str) -> str:
    """``stop_reason`` as the pages say it (the macro of compute/_stop_reason.html), as plain text."""
    words = get_template_attribute("compute/_stop_reason.html", "stop_reason_words")
    shown: Markup = words(reason)  # a macro's output: escaped HTML
    return shown.unescape().strip()


class NotebookOut(BaseModel):
    id: int
    allocation_id: int
    project_id: int
    profile: str
    gpus: int
    cpus: int
    state: Literal["starting", "ready", "stopped", "unknown"] = Field(
        description="From the hub for a running session (unknown: the hub did not answer); stopped once closed"
    )
    url: str = Field(description="Where the notebook opens in the browser (through the hub's login)")
    max_seconds: int = Field(description="The longest the server may run (the hours asked for)")
    charged_seconds: int = Field(description="Running time charged to the allocation so far")
    requested_at: datetime
    started_at: datetime | None
    stopped_at: datetime | None
    stop_reason: str = Field(description="Why it stopped, as stored (an English code); empty while it runs")
    stop_reason_shown: str = Field(description=STOP_REASON_SHOWN)


class NotebookListQuery(BaseModel):
    running: bool | None = Field(default=None, description="true: only running ones; false: only stopped ones")
    cursor: str | None = Field(default=None, max_length=2000, description="`next_cursor` of the previous page")
    size: int = Field(default=PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE, description="Sessions per page")


class NotebookSummaryOut(BaseModel):
    id: int
    allocation_id: int
    project_id: int
    profile: str
    running: bool
    requested_at: datetime
    started_at: datetime | None
    stopped_at: datetime | None
    stop_reason: str
    stop_reason_shown: str = Field(description=STOP_REASON_SHOWN)
    charged_seconds: int


class NotebookPageOut(BaseModel):
    notebooks: list[NotebookSummaryOut] = Field(description="Newest first")
    next_cursor: str | None = Field(description="Pass as `cursor` for the following page; null on the last")
    next: str | None = Field(description="The URL of the following page; null on the last")


class LaunchNotebookIn(BaseModel):
    allocation_id: int = Field(ge=1, le=2**62, description="An active allocation of one of your projects or courses")
    profile: str = Field(min_length=1, max_length=32, description="A notebook profile's name, e.g. 1x-h100")
    hours: float = Field(gt=0, le=24 * 366, allow_inf_nan=False, description="The longest it may run")


class StopNotebookIn(BaseModel):
    """No fields: send ``{}``."""


def _client() -> HubClient:
    return HubClient.from_settings(web.settings())


def _hub_unavailable(exc: HubError):
    """503 in the caller's language (as the notebook pages say it); what went wrong (in English, for the operators)
    goes to the log."""
    current_app.logger.warning("notebook service unavailable: %s", exc)
    response = web.problem(
        503,
        gettext("Notebooks unavailable"),
        gettext("The notebook service is not reachable right now. Try again in a minute."),
        type_slug="hub-unavailable",
    )
    response.headers["Retry-After"] = "60"
    return response


def _my_notebook(user: User, session_id: int) -> NotebookSession:
    found = get_db().get(NotebookSession, session_id)
    if found is None or found.user_id != user.id:
        raise NotFound(Message(N_("No such notebook session of yours.")))  # the same words whether it exists or not
    return found


def _notebook(found: NotebookSession) -> NotebookOut:
    state: str = "stopped"
    if found.stopped_at is None:
        try:
            status = _client().server_status(found.hub_user, found.server_name)
        except HubError:
            state = "unknown"
        else:
            state = {ServerStatus.READY: "ready", ServerStatus.PENDING: "starting"}.get(status, "stopped")
    return NotebookOut(
        id=found.id,
        allocation_id=found.allocation_id,
        project_id=found.project_id,
        profile=found.profile,
        gpus=found.gpus,
        cpus=found.cpus,
        state=state,
        url=notebook_url(web.settings().hub_url, found),
        max_seconds=found.max_seconds,
        charged_seconds=found.charged_seconds,
        requested_at=found.requested_at,
        started_at=found.started_at,
        stopped_at=found.stopped_at,
        stop_reason=found.stop_reason,
        stop_reason_shown=stop_reason_shown(found.stop_reason),
    )


#: Newest first: the id, descending.
NOTEBOOK_ORDER = (KeyColumn(-col(NotebookSession.id), int),)


@bp.get("/notebooks")
@token_required(ApiScope.READ)
@spec.validate(
    query=NotebookListQuery,
    resp=Response(HTTP_200=NotebookPageOut, HTTP_400=Problem, HTTP_401=Problem, HTTP_403=Problem, HTTP_422=Problem),
    tags=NOTEBOOK_TAGS,
    operation_id="list_notebooks",
    security={"bearerAuth": [ApiScope.READ.value]},
)
def list_notebooks():
    """The token owner's notebook sessions, newest first, one page at a time (a cursor not handed out: 400)."""
    query: NotebookListQuery = request.context.query
    stmt = select(NotebookSession).where(NotebookSession.user_id == api_user().id)
    if query.running is not None:
        stopped = col(NotebookSession.stopped_at)
        stmt = stmt.where(stopped.is_(None) if query.running else stopped.is_not(None))
    page = keyset_page(get_db(), stmt, NOTEBOOK_ORDER, lambda s: (-s.id,), cursor=query.cursor, size=query.size)
    following = None
    if page.next_cursor:
        extra = {"running": str(query.running).lower()} if query.running is not None else {}
        following = url_for(request.endpoint or "", cursor=page.next_cursor, size=query.size, **extra)
    return jsonify(
        NotebookPageOut(
            notebooks=[
                NotebookSummaryOut(
                    id=s.id,
                    allocation_id=s.allocation_id,
                    project_id=s.project_id,
                    profile=s.profile,
                    running=s.stopped_at is None,
                    requested_at=s.requested_at,
                    started_at=s.started_at,
                    stopped_at=s.stopped_at,
                    stop_reason=s.stop_reason,
                    stop_reason_shown=stop_reason_shown(s.stop_reason),
                    charged_seconds=s.charged_seconds,
                )
                for s in page.items
            ],
            next_cursor=page.next_cursor,
            next=following,
        ).model_dump(mode="json")
    )


@bp.post("/notebooks")
@token_required(ApiScope.WRITE)
@spec.validate(
    json=LaunchNotebookIn,
    resp=HubProblemResponse(
        HTTP_201=NotebookOut,
        HTTP_401=Problem,
        HTTP_403=Problem,
        HTTP_404=Problem,
        HTTP_422=Problem,
        HTTP_502=Problem,
    ),
    tags=NOTEBOOK_TAGS,
    operation_id="launch_notebook",
    security={"bearerAuth": [ApiScope.WRITE.value]},
)
def launch_notebook():
    """Start a notebook on an allocation, as the project's (or course's) start form does: the profile must
    exist and fit the allocation's resource, the hours must be positive and fit its balance and dates (the
    hub's spawn check enforces them again). 403: the spawn check refused it, saying why; 404: not an
    allocation of yours; 502: the hub started a server the portal has no record of; 503: the hub is down."""
    body: LaunchNotebookIn = request.context.json
    user = api_user()
    try:
        session_id = launch.start_notebook(
            get_db(), web.settings(), user, allocation_id=body.allocation_id, profile=body.profile, hours=body.hours
        )
    except HubError as exc:
        return _hub_unavailable(exc)
    if session_id is None:
        return web.problem(
            502, gettext("Bad Gateway"), gettext("The hub started a server the portal has no record of.")
        )
    found = _my_notebook(user, session_id)
    response = jsonify(_notebook(found).model_dump(mode="json"))
    response.status_code = 201
    response.headers["Location"] = url_for("api.get_notebook", session_id=found.id)
    return response


@bp.get("/notebooks/<int:session_id>")
@token_required(ApiScope.READ)
@spec.validate(
    resp=Response(HTTP_200=NotebookOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_404=Problem),
    tags=NOTEBOOK_TAGS,
    operation_id="get_notebook",
    security={"bearerAuth": [ApiScope.READ.value]},
)
def get_notebook(session_id: int):
    """One of the token owner's notebook sessions with its state at the hub (unknown while the hub is down)."""
    return jsonify(_notebook(_my_notebook(api_user(), session_id)).model_dump(mode="json"))


@bp.post("/notebooks/<int:session_id>/stop")
@token_required(ApiScope.WRITE)
@spec.validate(
    json=StopNotebookIn,
    resp=HubProblemResponse(HTTP_200=NotebookOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_404=Problem),
    tags=NOTEBOOK_TAGS,
    operation_id="stop_notebook",
    security={"bearerAuth": [ApiScope.WRITE.value]},
)
def stop_notebook(session_id: int):
    """Stop one of the token owner's notebooks, as "Stop" on the notebooks page: its time up to now is charged,
    then the hub stops it. Stopping a stopped notebook changes nothing and answers the same."""
    user = api_user()
    _my_notebook(user, session_id)
    try:
        stopped = launch.stop_notebook(get_db(), web.settings(), _client(), user, session_id=session_id)
    except HubError as exc:
        return _hub_unavailable(exc)
    return jsonify(_notebook(stopped).model_dump(mode="json"))
