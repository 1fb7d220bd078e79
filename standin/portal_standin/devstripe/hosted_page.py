"""The hosted payment page of a Checkout Session: ``GET /pay/{id}``, the stand-in's checkout.stripe.com.

Like Stripe's page it shows the line items and the total, asks for the customer's e-mail (taken from the
session's ``customer_email`` or customer when it has one) and takes a card. The stand-in has no card
fields; its buttons ``POST /pay/{id}`` with ``action``:

* ``pay``: pays with the test card 4242 4242 4242 4242 (see :meth:`CheckoutSession._pay`), then redirects
  (303) to ``success_url`` with ``{CHECKOUT_SESSION_ID}`` replaced by the session's id, as Stripe does; a
  session without ``success_url`` shows a confirmation instead;
* ``decline``: pays with a card that is declined: the page shows "Your card was declined." (402) and the
  session stays open, to be paid again;
* ``cancel``: redirects (303) to ``cancel_url``, the session staying open (Stripe's back link).

A session that is complete or expired shows a page saying so (200 or 410), an unknown one 404. The page is
self-contained HTML: no scripts, no external assets. It needs no API key: the auth middleware of
:mod:`portal_standin.devstripe.server` lets ``/pay/`` through.
"""

from __future__ import annotations

import html

from aiohttp import web
from localstripe.errors import UserError
from localstripe.resources import store

from portal_standin.devstripe.checkout import DECLINED_CARD, SUCCEEDING_CARD, CheckoutSession
from portal_standin.devstripe.money import format_amount

_STYLE = """
body { font-family: system-ui, sans-serif; background: #f6f8fa; color: #1a1f36; margin: 0; }
main { max-width: 34rem; margin: 2rem auto; background: #fff; border-radius: 8px; padding: 1.5rem 2rem;
       box-shadow: 0 1px 4px rgba(0, 0, 0, .15); }
.test-mode { background: #ffde92; color: #5b3a00; font-size: .8rem; font-weight: 600; padding: .1rem .5rem;
             border-radius: 4px; }
table { width: 100%; border-collapse: collapse; margin: 1rem 0; }
td, th { padding: .4rem 0; text-align: left; }
td.amount, th.amount { text-align: right; }
tfoot th { border-top: 1px solid #ccc; font-size: 1.2rem; }
label { display: block; margin: 1rem 0 .3rem; font-weight: 600; }
input { width: 100%; box-sizing: border-box; padding: .5rem; font-size: 1rem; }
.buttons { display: flex; flex-wrap: wrap; gap: .5rem; margin-top: 1.5rem; }
button { font-size: 1rem; padding: .6rem 1.2rem; border-radius: 6px; border: 1px solid #8792a2; background: #fff;
         cursor: pointer; }
button.pay { background: #0055de; border-color: #0055de; color: #fff; font-weight: 600; }
.error { background: #fde8e8; color: #8a1010; padding: .6rem; border-radius: 6px; }
.note { color: #4f566b; font-size: .9rem; }
"""


def _document(title: str, body: str, status: int = 200) -> web.Response:
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f'<body>\n<main>\n<p><span class="test-mode">TEST MODE</span> Local Stripe stand-in</p>\n{body}\n'
        "</main>\n</body>\n</html>\n"
    )
    return web.Response(text=page, status=status, content_type="text/html")


def _known_email(session: CheckoutSession) -> str | None:
    if session.customer_email:
        return session.customer_email
    if session.customer:
        customer = store.get("customer:" + session.customer)
        return getattr(customer, "email", None)
    return None


def _payment_form(
    session: CheckoutSession, *, error: str | None = None, email: str = "", status: int = 200
) -> web.Response:
    total = format_amount(session.amount_total, session.currency)
    rows = "".join(
        "<tr><td>{name}{description} × {quantity}</td><td class='amount'>{amount}</td></tr>".format(
            name=html.escape(item["description"]),
            description=(
                f"<br><span class='note'>{html.escape(item['_product_description'])}</span>"
                if item.get("_product_description")
                else ""
            ),
            quantity=item["quantity"],
            amount=html.escape(format_amount(item["amount_total"], item["currency"])),
        )
        for item in session._line_items
    )
    known_email = _known_email(session)
    if known_email:
        email_field = (
            f'<label for="email">Email</label><input id="email" type="email" name="email" '
            f'value="{html.escape(known_email)}" readonly>'
        )
    else:
        email_field = (
            f'<label for="email">Email</label><input id="email" type="email" name="email" '
            f'value="{html.escape(email)}" autocomplete="email" required>'
        )
    cancel = (
        '<button type="submit" name="action" value="cancel" formnovalidate>Cancel</button>'
        if session.cancel_url
        else ""
    )
    alert = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    body = f"""<h1>Pay {html.escape(total)}</h1>
{alert}
<table>
<thead><tr><th>Item</th><th class="amount">Amount</th></tr></thead>
<tbody>{rows}</tbody>
<tfoot><tr><th>Total due</th><th class="amount">{html.escape(total)}</th></tr></tfoot>
</table>
<form method="post" action="/pay/{html.escape(session.id)}">
{email_field}
<p class="note">Card: the test card 4242 4242 4242 4242 (succeeds) or, with the second button, a card that is
declined.</p>
<div class="buttons">
<button type="submit" name="action" value="pay" class="pay">Pay</button>
<button type="submit" name="action" value="decline">Pay with a declined card</button>
{cancel}
</div>
</form>"""
    return _document(f"Pay {total}", body, status)


def _closed_page(session: CheckoutSession) -> web.Response:
    if session.status == "complete":
        body = "<h1>Payment complete</h1><p>This Checkout Session has been paid.</p>"
        if session.success_url:
            body += f'<p><a href="{html.escape(_success_url(session))}">Continue</a></p>'
        return _document("Payment complete", body)
    return _document(
        "Checkout Session expired",
        "<h1>This Checkout Session has expired</h1><p>It can no longer be paid.</p>",
        410,
    )


def _session_or_404(request: web.Request) -> CheckoutSession | web.Response:
    try:
        return CheckoutSession._api_retrieve(request.match_info["id"])
    except UserError:
        return _document("Not found", "<h1>Not found</h1><p>There is no such Checkout Session.</p>", 404)


def _success_url(session: CheckoutSession) -> str:
    assert session.success_url is not None
    return session.success_url.replace("{CHECKOUT_SESSION_ID}", session.id)


async def show_page(request: web.Request) -> web.Response:
    session = _session_or_404(request)
    if isinstance(session, web.Response):
        return session
    if session.status != "open":
        return _closed_page(session)
    return _payment_form(session)


async def submit_page(request: web.Request) -> web.StreamResponse:
    session = _session_or_404(request)
    if isinstance(session, web.Response):
        return session
    if session.status != "open":
        return _closed_page(session)
    form = await request.post()
    action = form.get("action")
    if action == "cancel" and session.cancel_url:
        raise web.HTTPSeeOther(session.cancel_url)
    if action not in ("pay", "decline"):
        return _payment_form(session, error="Choose Pay, Pay with a declined card or Cancel.", status=400)

    email = _known_email(session) or str(form.get("email") or "").strip()
    if "@" not in email:
        return _payment_form(session, error="Enter your email address.", email=email, status=400)
    decline_message = session._pay(email, DECLINED_CARD if action == "decline" else SUCCEEDING_CARD)
    store.dump_to_disk()
    if decline_message is not None:
        return _payment_form(session, error=decline_message, email=email, status=402)
    if session.success_url:
        raise web.HTTPSeeOther(_success_url(session))
    return _closed_page(session)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/pay/{id}", show_page)
    app.router.add_post("/pay/{id}", submit_page)
