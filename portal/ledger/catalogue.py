"""The factory's sites and what they offer: seed data for a new installation and the demo."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlmodel import Session, select

from portal.ledger.models import CapacityPeriod, Resource, ResourceKind, Site
from portal.ledger.services import capacity_from_gpus, create_resource, create_site, quarter_of, set_capacity


@dataclass(frozen=True)
class PlannedResource:
    code: str
    name: str
    kind: ResourceKind
    #: GPUs, CPU cores, or TB of storage at the site.
    units: int
    gpu_model: str | None = None


@dataclass(frozen=True)
class PlannedSite:
    code: str
    name: str
    city: str
    country: str
    resources: tuple[PlannedResource, ...]


def _gpu(model: str, count: int) -> PlannedResource:
    return PlannedResource(model.lower(), f"{model} GPU-hours", ResourceKind.GPU, count, model)


def _cpu(cores: int) -> PlannedResource:
    return PlannedResource("cpu", "CPU core-hours", ResourceKind.CPU, cores)


def _storage(tb: int) -> PlannedResource:
    return PlannedResource("storage", "Storage TB-months", ResourceKind.STORAGE, tb)


SITES: tuple[PlannedSite, ...] = (
    PlannedSite(
        "waw", "Warsaw AI Centre", "Warsaw", "PL", (_gpu("H200", 512), _gpu("H100", 256), _cpu(20_000), _storage(4_000))
    ),
    PlannedSite("krk", "Kraków AI Centre", "Kraków", "PL", (_gpu("H100", 384), _cpu(12_000), _storage(2_000))),
    PlannedSite("poz", "Poznań AI Centre", "Poznań", "PL", (_gpu("H100", 256), _cpu(8_000), _storage(1_500))),
    PlannedSite("gdn", "Gdańsk AI Centre", "Gdańsk", "PL", (_gpu("H100", 128), _cpu(6_000), _storage(1_000))),
    PlannedSite("wro", "Wrocław AI Centre", "Wrocław", "PL", (_gpu("H100", 128), _cpu(6_000), _storage(1_000))),
    PlannedSite("vno", "Vilnius AI Centre", "Vilnius", "LT", (_gpu("H200", 256), _cpu(8_000), _storage(1_500))),
    PlannedSite("rix", "Riga AI Centre", "Riga", "LV", (_gpu("H100", 128), _cpu(6_000), _storage(1_000))),
    PlannedSite("tll", "Tallinn AI Centre", "Tallinn", "EE", (_gpu("H200", 128), _cpu(6_000), _storage(1_000))),
)

#: Target utilisation used to turn hardware into plannable capacity.
TARGET_UTILISATION_PERCENT = 80


def ensure_sites(db: Session, *, reason: str, plan_quarters_from: date | None = None, quarters: int = 0) -> list[Site]:
    """Create the factory's sites and resources where missing; optionally plan capacity for quarters.

    ``reason`` is what the audit log says for each thing created (the command or the demo that seeded it).

    Capacity per quarter = units × seconds in the quarter × target utilisation (storage: TB × 30000
    GB-days a month × 3 months).
    """
    sites = []
    for planned in SITES:
        site = db.exec(select(Site).where(Site.code == planned.code)).first()
        if site is None:
            site = create_site(
                db,
                None,
                code=planned.code,
                name=planned.name,
                city=planned.city,
                country=planned.country,
                reason=reason,
            )
        sites.append(site)
        for item in planned.resources:
            resource = db.exec(select(Resource).where(Resource.site_id == site.id, Resource.code == item.code)).first()
            if resource is None:
                resource = create_resource(
                    db,
                    None,
                    site,
                    code=item.code,
                    name=item.name,
                    kind=item.kind,
                    gpu_model=item.gpu_model,
                    overbooking_permille=1000,
                    reason=reason,
                )
            start = plan_quarters_from
            for _ in range(quarters if start else 0):
                assert start is not None
                q_start, q_end = quarter_of(start)
                if item.kind == ResourceKind.STORAGE:
                    capacity = item.units * 30_000 * 3  # TB × GB-days per TB-month × 3 months
                else:
                    capacity = capacity_from_gpus(item.units, q_start, q_end, TARGET_UTILISATION_PERCENT)
                planned_period = db.exec(
                    select(CapacityPeriod.id).where(
                        CapacityPeriod.resource_id == resource.id, CapacityPeriod.starts_on == q_start
                    )
                ).first()
                if planned_period is None:
                    set_capacity(db, None, resource, starts_on=q_start, ends_on=q_end, capacity=capacity, reason=reason)
                start = q_end
    return sites
