"""Orders and invoices over the JSON API: those of the organisations whose billing the caller may see (their
admins and billing members, and finance staff), and an invoice's PDF, through the same services as the
billing page."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from flask import Response as FlaskResponse
from flask import jsonify, request, url_for
from pydantic import BaseModel, Field
from spectree import Response
from sqlmodel import col

from portal.api.core import Problem, api_user, bp, responses, spec, token_required
from portal.db import get_db
from portal.errors import NotAuthorised, NotFound
from portal.identity.models import ApiScope, User
from portal.market import services
from portal.market.models import Invoice, InvoiceKind, Order, OrderState
from portal.messages import N_, Message
from portal.pagination import MAX_PAGE_SIZE, PAGE_SIZE, Cursor, KeyColumn, decode_cursor
from portal.projects import services as projects

TAGS = ["billing"]
T = TypeVar("T")


class PdfResponse(Response):
    """A 200 that is a PDF file, not JSON."""

    def generate_spec(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        responses = super().generate_spec(*args, **kwargs)
        responses["200"] = {
            "description": "The invoice or credit note as a PDF (Content-Disposition: attachment)",
            "content": {"application/pdf": {"schema": {"type": "string", "format": "binary"}}},
        }
        return responses


class OrderOut(BaseModel):
    id: int
    organisation_id: int | None = Field(description="The buying organisation; null for a private buyer")
    project_id: int
    offering_id: int
    allocation_id: int = Field(description="The allocation the bought hours are credited to")
    quantity: int = Field(description="Display units bought (GPU-hours)")
    unit_price_cents: int
    net_cents: int
    vat_basis_points: int = Field(description="The VAT rate in hundredths of a percent (2100 = 21 %)")
    vat_cents: int
    gross_cents: int
    refunded_cents: int
    currency: str
    vat_scheme: str = Field(description="domestic, reverse_charge, oss or outside_eu")
    state: OrderState
    created_at: datetime
    paid_at: datetime | None

    @classmethod
    def of(cls, order: Order) -> OrderOut:
        return cls(
            id=order.id,
            organisation_id=order.organisation_id,
            project_id=order.project_id,
            offering_id=order.offering_id,
            allocation_id=order.allocation_id,
            quantity=order.quantity,
            unit_price_cents=order.unit_price_cents,
            net_cents=order.net_cents,
            vat_basis_points=order.vat_basis_points,
            vat_cents=order.vat_cents,
            gross_cents=order.gross_cents,
            refunded_cents=order.refunded_cents,
            currency=order.currency,
            vat_scheme=order.vat_scheme,
            state=order.state,
            created_at=order.created_at,
            paid_at=order.paid_at,
        )


class InvoiceOut(BaseModel):
    id: int
    kind: InvoiceKind
    reference: str = Field(description="The number printed on it, e.g. BAIF-2026-000042")
    order_id: int
    organisation_id: int | None = Field(description="The buying organisation; null for a private buyer")
    corrects_id: int | None = Field(description="For a credit note, the invoice it corrects")
    issued_at: datetime
    currency: str
    net_cents: int
    vat_basis_points: int
    vat_cents: int
    gross_cents: int
    mention: str = Field(description="The legal mention (reverse charge, outside the EU) or empty")
    pdf: str = Field(description="The URL of its PDF")

    @classmethod
    def of(cls, invoice: Invoice) -> InvoiceOut:
        return cls(
            id=invoice.id,
            kind=invoice.kind,
            reference=invoice.reference,
            order_id=invoice.order_id,
            organisation_id=invoice.organisation_id,
            corrects_id=invoice.corrects_id,
            issued_at=invoice.issued_at,
            currency=invoice.currency,
            net_cents=invoice.net_cents,
            vat_basis_points=invoice.vat_basis_points,
            vat_cents=invoice.vat_cents,
            gross_cents=invoice.gross_cents,
            mention=invoice.mention,
            pdf=url_for("api.get_invoice_pdf", invoice_id=invoice.id),
        )


class BillingListQuery(BaseModel):
    organisation_id: int | None = Field(
        default=None,
        ge=1,
        le=2**62,
        description="Only this organisation's; absent: every organisation whose billing you see",
    )
    cursor: str | None = Field(default=None, max_length=2000, description="`next_cursor` of the previous page")
    size: int = Field(default=PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE, description="Items per page")


class OrderPageOut(BaseModel):
    orders: list[OrderOut] = Field(description="Newest first")
    next_cursor: str | None = Field(description="Pass as `cursor` for the following page; null on the last")
    next: str | None = Field(description="The URL of the following page; null on the last")


class InvoicePageOut(BaseModel):
    invoices: list[InvoiceOut] = Field(description="Newest first; invoices and credit notes")
    next_cursor: str | None = Field(description="Pass as `cursor` for the following page; null on the last")
    next: str | None = Field(description="The URL of the following page; null on the last")


#: Newest first: by id, descending (a cursor holds the boundary's id).
NEWEST_FIRST = (KeyColumn(col(Order.id), int),)


def _of_visible_organisations(
    user: User, organisation_id: int | None, read: Callable[[Any, User, Any], Sequence[T]]
) -> list[T]:
    """What ``read`` (a market service that checks the caller's billing rights) gives for one organisation,
    or for every organisation of the caller whose billing they may see."""
    db = get_db()
    if organisation_id is not None:
        try:
            organisation = projects.get_organisation(db, user, organisation_id)
        except NotAuthorised:
            raise NotFound(Message(N_("No such organisation."))) from None
        return list(read(db, user, organisation))
    found: list[T] = []
    for organisation, _role in projects.organisations_of(db, user):
        try:
            found.extend(read(db, user, organisation))
        except NotFound:  # a plain member: not their billing
            continue
    return found


def _page(items: list[T], id_of: Callable[[T], int], cursor: str | None, size: int) -> tuple[list[T], str | None]:
    """One page of ``items``, newest (highest id) first, after ``cursor``; and the next page's cursor."""
    position = decode_cursor(cursor, NEWEST_FIRST)
    ordered = sorted(items, key=id_of, reverse=True)
    if position is not None:
        ordered = [i for i in ordered if id_of(i) < position.key[0]]
    page = ordered[:size]
    following = Cursor((id_of(page[-1]),)).encode() if len(ordered) > size else None
    return page, following


def _following(cursor: str | None, query: BillingListQuery) -> str | None:
    if not cursor:
        return None
    extra = {"organisation_id": query.organisation_id} if query.organisation_id is not None else {}
    return url_for(request.endpoint or "", cursor=cursor, size=query.size, **extra)


@bp.get("/orders")
@token_required(ApiScope.READ)
@spec.validate(
    query=BillingListQuery,
    resp=Response(
        HTTP_200=OrderPageOut, HTTP_400=Problem, HTTP_401=Problem, HTTP_403=Problem, HTTP_404=Problem, HTTP_422=Problem
    ),
    tags=TAGS,
    operation_id="list_orders",
    security={"bearerAuth": [ApiScope.READ.value]},
)
def list_orders():
    """Orders of the organisations whose billing the caller sees (admins, billing members, finance), newest
    first, one page at a time. An organisation whose billing is not yours: 404; a cursor not handed out: 400."""
    query: BillingListQuery = request.context.query
    orders = _of_visible_organisations(api_user(), query.organisation_id, services.orders_of_organisation)
    page, following = _page(orders, lambda o: o.id, query.cursor, query.size)
    body = OrderPageOut(orders=[OrderOut.of(o) for o in page], next_cursor=following, next=_following(following, query))
    return jsonify(body.model_dump(mode="json"))


@bp.get("/invoices")
@token_required(ApiScope.READ)
@spec.validate(
    query=BillingListQuery,
    resp=responses(400, 401, 403, 404, 422, HTTP_200=InvoicePageOut),
    tags=TAGS,
    operation_id="list_invoices",
    security={"bearerAuth": [ApiScope.READ.value]},
)
def list_invoices():
    """Invoices and credit notes of the organisations whose billing the caller sees, newest first, one page at
    a time. An organisation whose billing is not yours: 404; a cursor not handed out: 400."""
    query: BillingListQuery = request.context.query
    invoices = _of_visible_organisations(api_user(), query.organisation_id, services.invoices_of_organisation)
    page, following = _page(invoices, lambda i: i.id, query.cursor, query.size)
    body = InvoicePageOut(
        invoices=[InvoiceOut.of(i) for i in page], next_cursor=following, next=_following(following, query)
    )
    return jsonify(body.model_dump(mode="json"))


@bp.get("/invoices/<int:invoice_id>/pdf")
@token_required(ApiScope.READ)
@spec.validate(
    resp=PdfResponse("HTTP_200", HTTP_401=Problem, HTTP_403=Problem, HTTP_404=Problem),
    tags=TAGS,
    operation_id="get_invoice_pdf",
    security={"bearerAuth": [ApiScope.READ.value]},
)
def get_invoice_pdf(invoice_id: int):
    """The invoice's (or credit note's) PDF, for the people who may see its order; another's reads as missing."""
    db = get_db()
    invoice = db.get(Invoice, invoice_id)
    try:
        if invoice is None:
            raise NotFound(Message(N_("No such invoice.")))
        services.get_order(db, api_user(), invoice.order_id)  # the same people as the order
    except NotFound:
        raise NotFound(Message(N_("No such invoice."))) from None
    from portal.market.invoice_pdf import invoice_pdf  # fpdf takes ~0.45 s to import: only when a PDF is made

    return FlaskResponse(
        invoice_pdf(invoice),
        mimetype="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="{invoice.reference}.pdf"'},
    )
