"""Named refusals of the ledger; the web and API layers map them to a message or a 409."""

from __future__ import annotations

from portal.errors import Conflict
from portal.messages import N_


class CapacityExhausted(Conflict):
    """A resource's capacity (× its overbooking factor) cannot hold the requested amount."""

    title = "Capacity exhausted"


class NoCapacityPlanned(Conflict):
    """Part of the requested dates has no capacity period for the resource."""

    title = "No capacity planned"


class InsufficientBalance(Conflict):
    title = "Insufficient balance"


#: An ``InsufficientBalance`` detail: the balance left and the amount asked for (``messages.Amount`` values).
NOT_ENOUGH_LEFT = N_("The allocation has %(balance)s left; %(asked)s were asked for.")


class AllocationClosed(Conflict):
    """The allocation is expired or suspended and takes no new movements of this kind."""

    title = "Allocation closed"
