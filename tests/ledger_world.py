"""The ledger tests' builders, now in ``tests/factories.py``; re-exported here for the tests that import them."""

from __future__ import annotations

from tests.factories import (
    HOUR,
    PROVIDER,
    Q1,
    Q2,
    World,
    admin,
    at,
    make_world,
    open_q1,
    person,
    publish_offering,
)

__all__ = [
    "HOUR",
    "PROVIDER",
    "Q1",
    "Q2",
    "World",
    "admin",
    "at",
    "make_world",
    "open_q1",
    "person",
    "publish_offering",
]
