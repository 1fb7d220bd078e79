"""Sites, resources and their planned capacity per period."""

from __future__ import annotations

from datetime import date

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from portal.audit import services as audit
from portal.audit.models import AuditAction
from portal.authz import Action, require
from portal.errors import InvalidInput
from portal.formatting import quantity
from portal.identity.models import User
from portal.ledger.models import (
    CapacityPeriod,
    Resource,
    ResourceKind,
    Site,
)
from portal.ledger.services.errors import (
    CapacityExhausted,
)
from portal.ledger.services.posting import (
    LARGEST_AMOUNT,
    _once,
)
from portal.messages import N_, Amount, Message


def create_site(db: Session, actor: User | None, *, code: str, name: str, city: str, country: str, reason: str) -> Site:
    if actor is not None:
        require(db, actor, Action.MANAGE_ALLOCATIONS)
    reason = audit.require_reason(reason)
    code = code.strip().lower()
    if not code.isalnum() or len(code) > 16:
        raise InvalidInput(
            Message(N_("A site code is up to 16 letters or digits.")),
            errors={"code": Message(N_("Letters and digits."))},
        )
    if db.exec(select(Site.id).where(Site.code == code)).first() is not None:
        raise InvalidInput(Message(N_("This site code is taken.")), errors={"code": Message(N_("Already used."))})
    site = Site(code=code, name=name.strip(), city=city.strip(), country=country.strip().upper())
    db.add(site)
    summary = f"site {site.code}: {site.name}, {site.city}"
    audit.record(db, actor, AuditAction.SITE_CREATED, site, summary=summary, reason=reason)
    db.commit()
    return site


#: What ``update_site`` may change, with each field's longest value. The code stays: Slurm cluster names, agent
#: tokens and Slurm account mappings key on it.
SITE_FIELDS = {"name": 200, "city": 100, "country": 2}
_SITE_FIELD_LENGTH = {
    "name": N_("The site's name is 1 to %(most)s characters."),
    "city": N_("The site's city is 1 to %(most)s characters."),
}


def update_site(
    db: Session,
    actor: User | None,
    site: Site,
    *,
    name: str | None = None,
    city: str | None = None,
    country: str | None = None,
    reason: str,
) -> Site:
    """Rename a site or correct its city or country (``None``: leave as it is); audited with each field's before and
    after. Values equal to the present ones change nothing and record nothing."""
    if actor is not None:
        require(db, actor, Action.MANAGE_ALLOCATIONS)
    reason = audit.require_reason(reason)
    given = {"name": name, "city": city, "country": country}
    if all(v is None for v in given.values()):
        raise InvalidInput(
            Message(N_("Give the site's new name, city or country.")),
            errors={"name": Message(N_("Nothing to change."))},
        )
    wanted: dict[str, str] = {}
    for field, value in given.items():
        if value is None:
            continue
        value = value.strip()
        if field == "country":
            if len(value) != 2 or not value.isascii() or not value.isalpha():
                raise InvalidInput(
                    Message(N_("A country is a two-letter ISO 3166-1 code, e.g. PL.")),
                    errors={"country": Message(N_("Two letters."))},
                )
            value = value.upper()
        elif not value or len(value) > SITE_FIELDS[field]:
            raise InvalidInput(
                Message(_SITE_FIELD_LENGTH[field], most=SITE_FIELDS[field]),
                errors={field: Message(N_("1 to %(most)s characters."), most=SITE_FIELDS[field])},
            )
        wanted[field] = value
    changed = {f: (getattr(site, f), v) for f, v in wanted.items() if getattr(site, f) != v}
    if not changed:
        return site
    for field, (_before, after) in changed.items():
        setattr(site, field, after)
    db.add(site)
    summary = f"site {site.code}: " + "; ".join(f"{f} {b!r} -> {a!r}" for f, (b, a) in changed.items())
    details = {f: {"before": b, "after": a} for f, (b, a) in changed.items()}
    audit.record(db, actor, AuditAction.SITE_UPDATED, site, summary=summary, reason=reason, details=details)
    db.commit()
    return site


def create_resource(
    db: Session,
    actor: User | None,
    site: Site,
    *,
    code: str,
    name: str,
    kind: ResourceKind,
    gpu_model: str | None = None,
    overbooking_permille: int = 1000,
    reason: str,
) -> Resource:
    if actor is not None:
        require(db, actor, Action.MANAGE_ALLOCATIONS)
    reason = audit.require_reason(reason)
    if overbooking_permille < 1000:
        raise InvalidInput(
            Message(N_("Overbooking is a factor of at least 1.0.")),
            errors={"overbooking": Message(N_("At least 1.0."))},
        )
    if kind == ResourceKind.GPU and not gpu_model:
        raise InvalidInput(
            Message(N_("A GPU resource names its GPU model.")), errors={"gpu_model": Message(N_("Required for GPUs."))}
        )
    resource = Resource(
        site_id=site.id,
        code=code.strip().lower(),
        name=name.strip(),
        kind=kind,
        gpu_model=gpu_model,
        overbooking_permille=overbooking_permille,
    )
    db.add(resource)
    try:
        summary = f"resource {resource.code} ({resource.name}) at site {site.code}"
        audit.record(db, actor, AuditAction.RESOURCE_CREATED, resource, summary=summary, reason=reason)
        db.commit()
    except IntegrityError as exc:
        db.rollback()
        raise InvalidInput(
            Message(N_("This site already has a resource with that code.")), errors={"code": Message(N_("Taken."))}
        ) from exc
    return resource


def set_overbooking(db: Session, actor: User | None, resource: Resource, permille: int, *, reason: str) -> Resource:
    """Change how far reservations may exceed capacity (1000 = none); never below what is reserved."""
    if actor is not None:
        require(db, actor, Action.MANAGE_CAPACITY)
    reason = audit.require_reason(reason)
    if not isinstance(permille, int) or not 1000 <= permille <= 3000:
        raise InvalidInput(
            Message(N_("Overbooking is a factor from 1.0 to 3.0.")),
            errors={"overbooking": Message(N_("From 1.0 to 3.0."))},
        )

    def work() -> Resource:
        periods = db.exec(
            select(CapacityPeriod).where(CapacityPeriod.resource_id == resource.id).with_for_update()
        ).all()
        for period in periods:
            if period.reserved * 1000 > period.capacity * permille:
                raise CapacityExhausted(
                    Message(
                        N_("%(starts)s to %(ends)s already has more reserved than that factor allows."),
                        starts=period.starts_on,
                        ends=period.ends_on,
                    )
                )
        locked = db.get(Resource, resource.id)
        assert locked is not None
        before, locked.overbooking_permille = locked.overbooking_permille, permille
        summary = f"overbooking of {locked.name} {before / 1000:.3f}x -> {permille / 1000:.3f}x"
        details = {"before_permille": before, "after_permille": permille}
        audit.record(
            db, actor, AuditAction.OVERBOOKING_CHANGED, locked, summary=summary, reason=reason, details=details
        )
        return locked

    return _once(db, None, work, lambda e: e)


#: The years the ledger plans for: capacity quarters and allocations lie within them (the last days of
#: ``date``'s range have no next quarter, nor a next day).
PLANNING_YEARS = (2000, 2999)


def quarter_of(day: date) -> tuple[date, date]:
    """The calendar quarter containing ``day``: (first day, first day of the next quarter)."""
    first_month = 3 * ((day.month - 1) // 3) + 1
    start = date(day.year, first_month, 1)
    end = date(day.year + (first_month + 3 > 12), (first_month + 2) % 12 + 1, 1)
    return start, end


def capacity_from_gpus(units: int, starts_on: date, ends_on: date, utilisation_percent: int) -> int:
    """Base units a period offers: devices (GPUs or cores) × seconds × target utilisation, in integers."""
    seconds = (ends_on - starts_on).days * 86_400
    return units * seconds * utilisation_percent // 100


def set_capacity(
    db: Session,
    actor: User | None,
    resource: Resource,
    *,
    starts_on: date,
    ends_on: date,
    capacity: int,
    reason: str,
) -> CapacityPeriod:
    """Plan (or re-plan) a resource's capacity for a period; never below what is already reserved."""
    if actor is not None:
        require(db, actor, Action.MANAGE_CAPACITY)
    reason = audit.require_reason(reason)
    if ends_on <= starts_on:
        raise InvalidInput(
            Message(N_("The period must end after it starts.")), errors={"ends_on": Message(N_("Before the start."))}
        )
    if not isinstance(capacity, int) or capacity < 0:
        raise InvalidInput(
            Message(N_("Capacity is a whole number, zero or more.")), errors={"capacity": Message(N_("Not negative."))}
        )
    if capacity > LARGEST_AMOUNT:
        raise InvalidInput(
            Message(N_("That is more than any resource has.")), errors={"capacity": Message(N_("Far too large."))}
        )

    def work() -> CapacityPeriod:
        period = db.exec(
            select(CapacityPeriod)
            .where(CapacityPeriod.resource_id == resource.id, CapacityPeriod.starts_on == starts_on)
            .with_for_update()
        ).first()
        if period is None:
            overlapping = db.exec(
                select(CapacityPeriod.id).where(
                    CapacityPeriod.resource_id == resource.id,
                    col(CapacityPeriod.starts_on) < ends_on,
                    col(CapacityPeriod.ends_on) > starts_on,
                )
            ).first()
            if overlapping is not None:
                raise InvalidInput(
                    Message(N_("This period overlaps another planned period of the resource.")),
                    errors={"starts_on": Message(N_("Overlaps another period."))},
                )
            period = CapacityPeriod(
                resource_id=resource.id,
                starts_on=starts_on,
                ends_on=ends_on,
                capacity=capacity,
            )
            db.add(period)
            before = None
        else:
            if ends_on != period.ends_on:
                raise InvalidInput(
                    Message(N_("A planned period keeps its dates; change only its capacity.")),
                    errors={"ends_on": Message(N_("This period ends on %(ends)s."), ends=period.ends_on)},
                )
            if capacity * resource.overbooking_permille < period.reserved * 1000:
                raise CapacityExhausted(
                    Message(
                        N_("%(reserved)s are already reserved in this period; capacity cannot go below that."),
                        reserved=Amount(
                            period.reserved // resource.per_display_unit * resource.per_display_unit, resource.kind, 0
                        ),
                    )
                )
            before, period.capacity = period.capacity, capacity
        db.flush()
        was = "nothing planned" if before is None else quantity(before, resource.kind)
        summary = f"{resource.name}, {starts_on} to {ends_on}: {was} -> {quantity(capacity, resource.kind)}"
        details = {"resource_id": resource.id, "before": before, "after": capacity}
        audit.record(db, actor, AuditAction.CAPACITY_CHANGED, period, summary=summary, reason=reason, details=details)
        return period

    return _once(db, None, work, lambda e: e)
