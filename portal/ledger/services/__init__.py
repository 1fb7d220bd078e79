"""The ledger: the only code that writes allocations, ledger entries and capacity reservations.

Every function is one transaction that either happens completely or not at all. Balances and reserved
capacity change through single SQL ``UPDATE ... SET x = x + :delta`` statements (atomic on SQLite and
PostgreSQL alike) after the rows are locked with ``SELECT ... FOR UPDATE`` on PostgreSQL, so concurrent
calls never lose an update, and capacity checks sit in the UPDATE's WHERE clause, so nothing is ever
oversold. A movement with an ``idempotency_key`` happens at most once.

The package is cut along what the ledger does: ``posting`` (the primitives every movement goes through),
``capacity``, ``sites``, ``usage``, ``allocations``, ``courses``, ``purchases``, ``checks``, and
``enforcement`` (what runs when an allocation becomes exhausted). Import from here.
"""

from __future__ import annotations

# What the single module had in its namespace besides its own names; code that reads them from here
# (``ledger.Conflict``, ``ledger.AllocationSource``) keeps working.
from portal.errors import Conflict, InvalidInput, NotFound
from portal.ledger.models import (
    CREDIT_KINDS,
    DEBIT_KINDS,
    Allocation,
    AllocationSource,
    AllocationState,
    CapacityPeriod,
    CapacityReservation,
    DailyUsage,
    EntryKind,
    LedgerEntry,
    Resource,
    ResourceKind,
    Site,
)
from portal.ledger.services.allocations import (
    adjust,
    credit,
    expire,
    open_allocation,
    release_to_pool,
    set_suspended,
    transfer,
)
from portal.ledger.services.capacity import (
    release_capacity,
    reserve_capacity,
)
from portal.ledger.services.checks import (
    BalanceMismatch,
    balance_mismatches,
)
from portal.ledger.services.courses import (
    return_course_hours,
    share_to_course,
    top_up_course,
)
from portal.ledger.services.enforcement import (
    EXTENSION,
    EnforcementHook,
    EnforcementHooks,
    enforce_exhaustion,
    enforcement_hooks_in_force,
    install_enforcement_hooks,
    register_enforcement_hook,
)
from portal.ledger.services.errors import (
    AllocationClosed,
    CapacityExhausted,
    InsufficientBalance,
    NoCapacityPlanned,
)
from portal.ledger.services.posting import (
    LARGEST_AMOUNT,
    unit_of_work,
)
from portal.ledger.services.purchases import (
    fulfil_purchase,
    hold_for_purchase,
    refund_unused,
    release_purchase_hold,
)
from portal.ledger.services.sites import (
    PLANNING_YEARS,
    capacity_from_gpus,
    create_resource,
    create_site,
    quarter_of,
    set_capacity,
    set_overbooking,
    update_site,
)
from portal.ledger.services.usage import (
    KEY_CHUNK,
    UsageCharge,
    charge_usage,
    charge_usage_batch,
)

__all__ = [
    "CREDIT_KINDS",
    "DEBIT_KINDS",
    "EXTENSION",
    "KEY_CHUNK",
    "LARGEST_AMOUNT",
    "PLANNING_YEARS",
    "Allocation",
    "AllocationClosed",
    "AllocationSource",
    "AllocationState",
    "BalanceMismatch",
    "CapacityExhausted",
    "CapacityPeriod",
    "CapacityReservation",
    "Conflict",
    "DailyUsage",
    "EnforcementHook",
    "EnforcementHooks",
    "EntryKind",
    "InsufficientBalance",
    "InvalidInput",
    "LedgerEntry",
    "NoCapacityPlanned",
    "NotFound",
    "Resource",
    "ResourceKind",
    "Site",
    "UsageCharge",
    "adjust",
    "balance_mismatches",
    "capacity_from_gpus",
    "charge_usage",
    "charge_usage_batch",
    "create_resource",
    "create_site",
    "credit",
    "enforce_exhaustion",
    "enforcement_hooks_in_force",
    "expire",
    "fulfil_purchase",
    "hold_for_purchase",
    "install_enforcement_hooks",
    "open_allocation",
    "quarter_of",
    "refund_unused",
    "register_enforcement_hook",
    "release_capacity",
    "release_purchase_hold",
    "release_to_pool",
    "reserve_capacity",
    "return_course_hours",
    "set_capacity",
    "set_overbooking",
    "set_suspended",
    "share_to_course",
    "top_up_course",
    "transfer",
    "unit_of_work",
    "update_site",
]
