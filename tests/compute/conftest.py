"""The compute tests' shared fixtures: a site with GPU capacity planned around now, and CPU core-hours there."""

from __future__ import annotations

import pytest
from sqlmodel import Session

from portal.ledger.models import Resource
from tests.factories import HOUR, World, cpu_resource, make_world, plan_capacity_around_now


@pytest.fixture
def world(db: Session) -> World:
    world = make_world(db)
    plan_capacity_around_now(db, world.gpu, 100_000 * HOUR)
    return world


@pytest.fixture
def cpu(db: Session, world: World) -> Resource:
    return cpu_resource(db, world)
