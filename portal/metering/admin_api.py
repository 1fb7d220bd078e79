"""``/api/v1/admin/...``: an operator sets up a cluster over the API, as on the admin pages and with the
``portal`` command: sites, resources, capacity per period, manual allocations and their adjustments, and the
Slurm accounts that draw from allocations.

Every route needs a token with the ``operate`` scope, which only factory admins and site operators may hold
(``identity.models.PRIVILEGED_SCOPES``); each write then asks the same service function as the page, which
checks the caller's role again, requires the reason and writes the audit record in the same transaction.

The routes live here, not in ``ledger``: the ledger may not import the API (``ledger-is-the-heart``), and
metering is the package above it that turns these allocations into Slurm accounts and charges.
"""

from __future__ import annotations

from datetime import date

from flask import current_app, jsonify, request, url_for
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from spectree import Response
from sqlmodel import col, select

from portal.api.core import Problem, api_user, bp, spec, token_required
from portal.audit.services import REASON_LENGTH
from portal.authz import Action, require
from portal.db import LARGEST_ID, find, get_db
from portal.errors import InvalidInput, NotFound
from portal.identity.models import ApiScope
from portal.ledger import services as ledger
from portal.ledger import wording
from portal.ledger.api import SHOWN, STORED
from portal.ledger.models import (
    Allocation,
    AllocationSource,
    CapacityPeriod,
    Resource,
    ResourceKind,
    Site,
)
from portal.messages import N_, Message
from portal.metering.models import SlurmAccount
from portal.metering.services import map_slurm_account
from portal.pagination import MAX_PAGE_SIZE, PAGE_SIZE, KeyColumn, keyset_page
from portal.projects.services import get_project

#: The OpenAPI security requirement of every route here: the bearer token with the ``operate`` scope.
OPERATE = [{"bearerAuth": [ApiScope.OPERATE.value]}]
REASON = Field(
    min_length=REASON_LENGTH[0],
    max_length=REASON_LENGTH[1],
    description="Why: kept with the change in the audit log",
)


def _dump(model: BaseModel):
    return jsonify(model.model_dump(mode="json"))


def _require_operator() -> None:
    """Reading the set-up is for those who may plan capacity (admins and site operators)."""
    require(get_db(), api_user(), Action.MANAGE_CAPACITY)


# --- sites -------------------------------------------------------------------------------------------------


class SiteOut(BaseModel):
    id: int
    code: str = Field(description="Lower-case code used in Slurm cluster names and agent tokens")
    name: str
    city: str
    country: str = Field(description="ISO 3166-1 alpha-2")

    @classmethod
    def of(cls, site: Site) -> SiteOut:
        return cls(id=site.id, code=site.code, name=site.name, city=site.city, country=site.country)


class SiteListOut(BaseModel):
    sites: list[SiteOut] = Field(description="Every site, by code")


class SiteIn(BaseModel):
    code: str = Field(min_length=1, max_length=16, description="Up to 16 letters or digits, e.g. `waw`")
    name: str = Field(min_length=1, max_length=200)
    city: str = Field(min_length=1, max_length=100)
    country: str = Field(pattern=r"^[A-Za-z]{2}$", description="ISO 3166-1 alpha-2, e.g. PL")
    reason: str = REASON


class SiteUpdateIn(BaseModel):
    """The fields to change; those left out stay as they are. The code does not change: Slurm cluster names, agent
    tokens and Slurm account mappings key on it (a body naming it is refused)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    city: str | None = Field(default=None, min_length=1, max_length=100)
    country: str | None = Field(default=None, pattern=r"^[A-Za-z]{2}$", description="ISO 3166-1 alpha-2, e.g. PL")
    reason: str = REASON


@bp.get("/admin/sites")
@token_required(ApiScope.OPERATE)
@spec.validate(
    resp=Response(HTTP_200=SiteListOut, HTTP_401=Problem, HTTP_403=Problem),
    tags=["operators"],
    operation_id="list_sites",
    security=OPERATE,
)
def list_sites():
    """The factory's sites.

    Scope: `operate` (factory admins and site operators)."""
    _require_operator()
    sites = get_db().exec(select(Site).order_by(Site.code)).all()
    return _dump(SiteListOut(sites=[SiteOut.of(s) for s in sites]))


@bp.post("/admin/sites")
@token_required(ApiScope.OPERATE)
@spec.validate(
    json=SiteIn,
    resp=Response(HTTP_201=SiteOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_422=Problem),
    tags=["operators"],
    operation_id="create_site",
    security=OPERATE,
)
def create_site():
    """Add a site (admins); audited with the reason.

    Scope: `operate` (factory admins and site operators)."""
    body: SiteIn = request.context.json
    site = ledger.create_site(
        get_db(), api_user(), code=body.code, name=body.name, city=body.city, country=body.country, reason=body.reason
    )
    return _dump(SiteOut.of(site)), 201


@bp.patch("/admin/sites/<int:site_id>")
@token_required(ApiScope.OPERATE)
@spec.validate(
    json=SiteUpdateIn,
    resp=Response(HTTP_200=SiteOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_404=Problem, HTTP_422=Problem),
    tags=["operators"],
    operation_id="update_site",
    security=OPERATE,
)
def update_site(site_id: int):
    """Rename a site or correct its city or country (admins); its code never changes. Audited with the reason and
    each field's value before and after; a body that changes nothing records nothing.

    Scope: `operate` (factory admins and site operators)."""
    db = get_db()
    body: SiteUpdateIn = request.context.json
    site = find(db, Site, site_id)
    if site is None:
        raise NotFound(Message(N_("No such site.")))
    site = ledger.update_site(
        db, api_user(), site, name=body.name, city=body.city, country=body.country, reason=body.reason
    )
    return _dump(SiteOut.of(site))


# --- resources ---------------------------------------------------------------------------------------------


class ResourceOut(BaseModel):
    id: int
    site_id: int
    code: str
    name: str
    kind: ResourceKind
    gpu_model: str | None
    overbooking_permille: int = Field(description="Reservations may exceed capacity by this factor (1000 = none)")
    base_unit: str = Field(description="The unit of every quantity of this resource: GPU-second, core-second, GB-day")

    @classmethod
    def of(cls, resource: Resource) -> ResourceOut:
        return cls(
            id=resource.id,
            site_id=resource.site_id,
            code=resource.code,
            name=resource.name,
            kind=resource.kind,
            gpu_model=resource.gpu_model,
            overbooking_permille=resource.overbooking_permille,
            base_unit=resource.base_unit,
        )


class ResourceListQuery(BaseModel):
    site_id: int | None = Field(default=None, ge=1, le=LARGEST_ID, description="Only this site's resources")


class ResourceListOut(BaseModel):
    resources: list[ResourceOut] = Field(description="By site, then code")


class ResourceIn(BaseModel):
    code: str = Field(min_length=1, max_length=32, description="Unique within the site, e.g. `h200`")
    name: str = Field(min_length=1, max_length=200)
    kind: ResourceKind
    gpu_model: str | None = Field(default=None, max_length=32, description="Required for a GPU resource, e.g. H200")
    overbooking_permille: int = Field(default=1000, ge=1000, le=3000)
    reason: str = REASON


@bp.get("/admin/resources")
@token_required(ApiScope.OPERATE)
@spec.validate(
    query=ResourceListQuery,
    resp=Response(HTTP_200=ResourceListOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_422=Problem),
    tags=["operators"],
    operation_id="list_resources",
    security=OPERATE,
)
def list_resources():
    """The sites' resources.

    Scope: `operate` (factory admins and site operators)."""
    _require_operator()
    query: ResourceListQuery = request.context.query
    stmt = select(Resource).join(Site, Site.id == Resource.site_id).order_by(Site.code, Resource.code)
    if query.site_id is not None:
        stmt = stmt.where(Resource.site_id == query.site_id)
    return _dump(ResourceListOut(resources=[ResourceOut.of(r) for r in get_db().exec(stmt)]))


@bp.post("/admin/sites/<int:site_id>/resources")
@token_required(ApiScope.OPERATE)
@spec.validate(
    json=ResourceIn,
    resp=Response(HTTP_201=ResourceOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_404=Problem, HTTP_422=Problem),
    tags=["operators"],
    operation_id="create_resource",
    security=OPERATE,
)
def create_resource(site_id: int):
    """Add a resource to a site (admins); audited with the reason.

    Scope: `operate` (factory admins and site operators)."""
    db = get_db()
    body: ResourceIn = request.context.json
    site = find(db, Site, site_id)
    if site is None:
        raise NotFound(Message(N_("No such site.")))
    resource = ledger.create_resource(
        db,
        api_user(),
        site,
        code=body.code,
        name=body.name,
        kind=body.kind,
        gpu_model=body.gpu_model,
        overbooking_permille=body.overbooking_permille,
        reason=body.reason,
    )
    return _dump(ResourceOut.of(resource)), 201


# --- capacity ----------------------------------------------------------------------------------------------


class PeriodOut(BaseModel):
    id: int
    starts_on: date = Field(description="First day, inclusive")
    ends_on: date = Field(description="Day after the last day (exclusive end)")
    capacity: int = Field(description="Base units the period offers")
    reserved: int = Field(description="Base units reserved by allocations")


class CapacityOut(BaseModel):
    resource_id: int
    base_unit: str
    periods: list[PeriodOut] = Field(description="Every planned period, by start")


class CapacityIn(BaseModel):
    starts_on: date = Field(description="First day; an existing period is re-planned when it starts on this day")
    ends_on: date = Field(description="Day after the last day")
    capacity: int = Field(ge=0, description="Base units (GPU-seconds, core-seconds, GB-days)")
    reason: str = REASON


def _resource(resource_id: int) -> Resource:
    resource = find(get_db(), Resource, resource_id)
    if resource is None:
        raise NotFound(Message(N_("No such resource.")))
    return resource


def _period_out(period: CapacityPeriod) -> PeriodOut:
    return PeriodOut(
        id=period.id,
        starts_on=period.starts_on,
        ends_on=period.ends_on,
        capacity=period.capacity,
        reserved=period.reserved,
    )


@bp.get("/admin/resources/<int:resource_id>/capacity")
@token_required(ApiScope.OPERATE)
@spec.validate(
    resp=Response(HTTP_200=CapacityOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_404=Problem),
    tags=["operators"],
    operation_id="get_capacity",
    security=OPERATE,
)
def get_capacity(resource_id: int):
    """A resource's planned capacity per period, and how much of it is reserved.

    Scope: `operate` (factory admins and site operators)."""
    _require_operator()
    resource = _resource(resource_id)
    periods = get_db().exec(
        select(CapacityPeriod).where(CapacityPeriod.resource_id == resource.id).order_by(CapacityPeriod.starts_on)
    )
    return _dump(
        CapacityOut(resource_id=resource.id, base_unit=resource.base_unit, periods=[_period_out(p) for p in periods])
    )


@bp.put("/admin/resources/<int:resource_id>/capacity")
@token_required(ApiScope.OPERATE)
@spec.validate(
    json=CapacityIn,
    resp=Response(
        HTTP_200=PeriodOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_404=Problem, HTTP_409=Problem, HTTP_422=Problem
    ),
    tags=["operators"],
    operation_id="set_capacity",
    security=OPERATE,
)
def set_capacity(resource_id: int):
    """Plan, or re-plan, a period's capacity: never below what is reserved (409); a new period may not overlap another
    (422). Audited with the reason.

    Scope: `operate` (factory admins and site operators)."""
    body: CapacityIn = request.context.json
    period = ledger.set_capacity(
        get_db(),
        api_user(),
        _resource(resource_id),
        starts_on=body.starts_on,
        ends_on=body.ends_on,
        capacity=body.capacity,
        reason=body.reason,
    )
    return _dump(_period_out(period))


# --- manual allocations --------------------------------------------------------------------------------------


class AllocationOut(BaseModel):
    id: int
    project_id: int
    resource_id: int
    source: AllocationSource
    state: str
    title: str = Field(description=f"The allocation's title. {STORED}")
    title_shown: str = Field(description=f"The title. {SHOWN}")
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    balance: int = Field(description="Base units left")
    credited: int
    used: int
    reserved: int

    @classmethod
    def of(cls, allocation: Allocation) -> AllocationOut:
        return cls(
            id=allocation.id,
            project_id=allocation.project_id,
            resource_id=allocation.resource_id,
            source=allocation.source,
            state=allocation.state,
            title=allocation.title,
            title_shown=wording.allocation_title(allocation),
            starts_at=allocation.starts_at,
            ends_at=allocation.ends_at,
            balance=allocation.balance,
            credited=allocation.credited,
            used=allocation.used,
            reserved=allocation.reserved,
        )


class AllocationIn(BaseModel):
    project_id: int = Field(ge=1, le=LARGEST_ID)
    resource_id: int = Field(ge=1, le=LARGEST_ID)
    amount: int = Field(gt=0, description="Base units to credit (GPU-seconds, core-seconds, GB-days)")
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    title: str = Field(default="", max_length=200, description="The resource's name when empty")
    reason: str = REASON


class AdjustmentIn(BaseModel):
    amount: int = Field(description="Base units to add (positive) or take away (negative); not zero")
    reason: str = REASON


class AdjustmentOut(BaseModel):
    ledger_entry_id: int
    allocation_id: int
    amount: int
    balance_after: int


@bp.post("/admin/allocations")
@token_required(ApiScope.OPERATE)
@spec.validate(
    json=AllocationIn,
    resp=Response(HTTP_201=AllocationOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_409=Problem, HTTP_422=Problem),
    tags=["operators"],
    operation_id="open_allocation",
    security=OPERATE,
)
def open_allocation():
    """Open an allocation by hand (admins), reserving its capacity; 409 when the capacity is not there. Audited with
    the reason.

    Scope: `operate` (factory admins and site operators)."""
    db, user = get_db(), api_user()
    body: AllocationIn = request.context.json
    require(db, user, Action.MANAGE_ALLOCATIONS)  # before the project lookup says whether it exists
    project = get_project(db, user, body.project_id)
    resource = find(db, Resource, body.resource_id)
    if resource is None:
        raise InvalidInput(Message(N_("No such resource.")), errors={"resource_id": Message(N_("No such resource."))})
    allocation = ledger.open_allocation(
        db,
        user,
        project=project,
        resource=resource,
        amount=body.amount,
        starts_at=body.starts_at,
        ends_at=body.ends_at,
        source=AllocationSource.ADMIN,
        title=body.title,
        reason=body.reason,
    )
    return _dump(AllocationOut.of(allocation)), 201


@bp.post("/admin/allocations/<int:allocation_id>/adjustments")
@token_required(ApiScope.OPERATE)
@spec.validate(
    json=AdjustmentIn,
    resp=Response(
        HTTP_201=AdjustmentOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_404=Problem, HTTP_409=Problem, HTTP_422=Problem
    ),
    tags=["operators"],
    operation_id="adjust_allocation",
    security=OPERATE,
)
def adjust_allocation(allocation_id: int):
    """Correct an allocation's balance (admins): a ledger entry of kind adjustment. Audited with the reason.

    Scope: `operate` (factory admins and site operators)."""
    db, user = get_db(), api_user()
    body: AdjustmentIn = request.context.json
    require(db, user, Action.MANAGE_ALLOCATIONS)
    if find(db, Allocation, allocation_id) is None:
        raise NotFound(Message(N_("No such allocation.")))
    entry = ledger.adjust(db, user, allocation_id, body.amount, reason=body.reason)
    out = AdjustmentOut(
        ledger_entry_id=entry.id, allocation_id=allocation_id, amount=entry.amount, balance_after=entry.balance_after
    )
    return _dump(out), 201


# --- Slurm accounts ----------------------------------------------------------------------------------------


class SlurmAccountOut(BaseModel):
    id: int
    cluster: str
    account: str = Field(description="Lower case, as sacctmgr stores it")
    allocation_id: int


class SlurmAccountQuery(BaseModel):
    cluster: str | None = Field(default=None, max_length=64, description="Only this cluster's accounts")
    cursor: str | None = Field(default=None, max_length=2000, description="`next_cursor` of the previous page")
    size: int = Field(default=PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)


class SlurmAccountPageOut(BaseModel):
    slurm_accounts: list[SlurmAccountOut] = Field(description="Oldest mapping first")
    next_cursor: str | None = Field(description="Pass as `cursor` for the following page; null on the last")
    next: str | None = Field(description="The URL of the following page; null on the last")


class SlurmAccountIn(BaseModel):
    cluster: str = Field(min_length=1, max_length=64, description="A configured cluster (PORTAL_SLURM_CLUSTERS)")
    account: str = Field(min_length=1, max_length=64, description="An existing Slurm account on the cluster")
    allocation_id: int = Field(ge=1, le=LARGEST_ID)
    reason: str = REASON


def _slurm_out(row: SlurmAccount) -> SlurmAccountOut:
    return SlurmAccountOut(id=row.id, cluster=row.cluster, account=row.account, allocation_id=row.allocation_id)


@bp.get("/admin/slurm-accounts")
@token_required(ApiScope.OPERATE)
@spec.validate(
    query=SlurmAccountQuery,
    resp=Response(HTTP_200=SlurmAccountPageOut, HTTP_400=Problem, HTTP_401=Problem, HTTP_403=Problem, HTTP_422=Problem),
    tags=["operators"],
    operation_id="list_slurm_accounts",
    security=OPERATE,
)
def list_slurm_accounts():
    """Which allocation each Slurm account draws from (what `portal slurm sync` and the sacct import use), one page at
    a time.

    Scope: `operate` (factory admins and site operators)."""
    db = get_db()
    require(db, api_user(), Action.MANAGE_ALLOCATIONS)
    query: SlurmAccountQuery = request.context.query
    stmt = select(SlurmAccount)
    if query.cluster:
        stmt = stmt.where(SlurmAccount.cluster == query.cluster)
    page = keyset_page(
        db,
        stmt,
        [KeyColumn(col(SlurmAccount.id), int)],
        lambda row: (row.id,),
        cursor=query.cursor,
        size=query.size,
    )
    following = None
    if page.next_cursor:
        args = {"cursor": page.next_cursor, "size": query.size} | ({"cluster": query.cluster} if query.cluster else {})
        following = url_for(request.endpoint or "", **args)
    return _dump(
        SlurmAccountPageOut(
            slurm_accounts=[_slurm_out(r) for r in page.items], next_cursor=page.next_cursor, next=following
        )
    )


@bp.post("/admin/slurm-accounts")
@token_required(ApiScope.OPERATE)
@spec.validate(
    json=SlurmAccountIn,
    resp=Response(HTTP_201=SlurmAccountOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_404=Problem, HTTP_422=Problem),
    tags=["operators"],
    operation_id="map_slurm_account",
    security=OPERATE,
)
def map_slurm_account_route():
    """Let an existing Slurm account draw from a CPU or GPU allocation at the cluster's site (admins); mapping it again
    to the same allocation changes nothing. Audited with the reason.

    Scope: `operate` (factory admins and site operators)."""
    body: SlurmAccountIn = request.context.json
    cluster = current_app.extensions["portal.settings"].slurm_cluster(body.cluster)
    if cluster is None:
        raise InvalidInput(
            Message(N_("Slurm cluster '%(cluster)s' is not configured (PORTAL_SLURM_CLUSTERS)."), cluster=body.cluster),
            errors={"cluster": Message(N_("Not a configured cluster."))},
        )
    mapping = map_slurm_account(
        get_db(),
        api_user(),
        cluster=cluster.name,
        account=body.account,
        allocation_id=body.allocation_id,
        reason=body.reason,
        site=cluster.site,
    )
    return _dump(_slurm_out(mapping)), 201
