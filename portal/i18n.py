"""The five languages: which one a request is answered in, the switch on every page, and the catalogues.

A page is answered in the logged-in user's saved language, else the one chosen in this browser (a cookie, so that
it outlives logging out), else the best match of ``Accept-Language`` among ``PORTAL_LANGUAGES``, else English. The
API (``/api/``) follows ``Accept-Language`` alone; the CLI, CSV files and the audit log stay English.

The catalogues are ``portal/translations/<lang>/LC_MESSAGES/messages.po``; ``compile_catalogues`` builds the
``.mo`` files beside them (``scripts/bootstrap``, and ``init_app`` for any that are missing or older than their
``.po``). How to add a language or a message: docs/development.md, "Adding a language"."""

from __future__ import annotations

import logging
import os
import tempfile
from datetime import date as Date
from datetime import datetime as DateTime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from flask import Blueprint, Flask, abort, has_request_context, redirect, request, session
from flask_babel import Babel, get_locale, get_translations, gettext
from flask_login import current_user
from jinja2 import pass_context

from portal import formatting
from portal.db import get_db
from portal.forms import ActionForm, use_form_messages
from portal.web import actor, login_manager, safe_next, settings

if TYPE_CHECKING:
    from babel.support import NullTranslations
    from jinja2.runtime import Context
    from sqlmodel import Session

    from portal.identity.models import User
    from portal.ledger.models import ResourceKind

#: Every language the portal has a catalogue for, named in its own language (the switch shows these names).
LANGUAGE_NAMES = {"en": "English", "pl": "Polski", "lt": "Lietuvių", "lv": "Latviešu", "et": "Eesti"}
#: The language of the CLI, of CSV files and of anything shown outside a request.
DEFAULT_LANGUAGE = formatting.DEFAULT_LOCALE
#: The cookie that keeps a browser's choice (also after logging out, which clears the session).
COOKIE = "portal_language"
COOKIE_MAX_AGE = 365 * 24 * 3600
TRANSLATIONS = formatting.TRANSLATIONS

log = logging.getLogger("portal.i18n")
bp = Blueprint("i18n", __name__)


def N_(message: str) -> str:
    """Marks a message for the catalogue (``pybabel extract`` finds it) where it is translated later, at the
    moment it is shown (``gettext(message)``)."""
    return message


#: Messages that reach people from code that cannot mark them where they are written: Werkzeug's names and
#: descriptions of the HTTP errors (error pages, API problems) and the titles of the ``DomainError`` classes of
#: every package (tests/i18n/test_i18n.py checks that each of those is here). The error pages and API problems
#: (``portal.web``) look each up in the catalogue when they show it.
MESSAGES_FROM_ELSEWHERE = (
    N_("Bad Request"),
    N_("The browser (or proxy) sent a request that this server could not understand."),
    N_("Unauthorized"),
    N_("Forbidden"),
    N_(
        "You don't have the permission to access the requested resource. It is either read-protected or not "
        "readable by the server."
    ),
    N_("Not Found"),
    N_(
        "The requested URL was not found on the server. If you entered the URL manually please check your "
        "spelling and try again."
    ),
    N_("Method Not Allowed"),
    N_("The method is not allowed for the requested URL."),
    N_("Request Entity Too Large"),
    N_("The data value transmitted exceeds the capacity limit."),
    N_("Too Many Requests"),
    N_("Internal Server Error"),
    N_(
        "The server encountered an internal error and was unable to complete your request. Either the server is "
        "overloaded or there is an error in the application."
    ),
    N_("Bad Gateway"),
    N_("Request refused"),
    N_("Not found"),
    N_("Not allowed"),
    N_("Invalid input"),
    N_("Conflict"),
    N_("Authentication required"),
    N_("Login refused"),
    N_("Level of assurance too low"),
    N_("Invitation no longer valid"),
    N_("Allocation closed"),
    N_("Call budget exhausted"),
    N_("Capacity exhausted"),
    N_("Conflict of interest"),
    N_("Course closed"),
    N_("Course full"),
    N_("Insufficient balance"),
    N_("Invalid cursor"),
    N_("Login provider unavailable"),
    N_("No capacity planned"),
    N_("Not eligible"),
    N_("Not eligible for this course"),
    N_("Not possible in this state"),
    N_("Order not possible"),
    N_("Payment not booked yet"),
    N_("Payment service unavailable"),
    N_("Slurm command failed"),
    N_("Spawn refused"),
    N_("This invitation is for someone else"),
    N_("Too many attempts"),
    N_("VAT number not confirmed"),
)


def enabled_languages() -> list[str]:
    return list(settings().languages)


def _fallback(enabled: list[str]) -> str:
    return DEFAULT_LANGUAGE if DEFAULT_LANGUAGE in enabled or not enabled else enabled[0]


def select_language() -> str:
    """The language of this request (Flask-Babel's locale selector); English outside a request."""
    if not has_request_context():
        return DEFAULT_LANGUAGE
    enabled = enabled_languages()
    if not request.path.startswith("/api/"):
        if session.get("_user_id") is not None and current_user.is_authenticated:
            saved = current_user.preferred_language
            if saved in enabled:
                return saved
        chosen = request.cookies.get(COOKIE)
        if chosen in enabled:
            return chosen
    return request.accept_languages.best_match(enabled) or _fallback(enabled)


def current_language() -> str:
    return str(get_locale() or DEFAULT_LANGUAGE)


def remember_language(db: Session, user: User, language: str) -> None:
    """Saves ``language`` as ``user``'s own choice: their pages, e-mails and notices follow it from now on."""
    user.preferred_language = language
    db.add(user)
    db.commit()


def adopt_browser_language(db: Session, user: User) -> None:
    """At login: a user who has chosen no language on their account keeps the one this browser chose with the
    switch before logging in (their e-mails and notices then follow it too)."""
    chosen = request.cookies.get(COOKIE)
    if user.preferred_language is None and chosen in enabled_languages():
        remember_language(db, user, chosen)


@bp.post("/language")
def choose_language():
    """The switch on every page: saves the choice (on the account when logged in, in this browser always) and
    goes back to the page it was made on."""
    if not ActionForm().validate_on_submit():
        abort(400)
    language = request.form.get("language", "")
    if language not in enabled_languages():
        abort(400, gettext("Choose one of the languages offered."))
    if current_user.is_authenticated:
        remember_language(get_db(), actor(), language)
    response = redirect(safe_next(request.form.get("next")))
    response.set_cookie(
        COOKIE,
        language,
        max_age=COOKIE_MAX_AGE,
        secure=settings().secure_cookies,
        httponly=True,
        samesite="Lax",
    )
    return response


def compile_catalogues(directory: Path = TRANSLATIONS) -> list[Path]:
    """Builds each ``.mo`` that is missing or older than its ``.po`` (fuzzy entries left out, as they count as
    untranslated); returns those built. Each is written to a temporary file and renamed, so a process reading the
    catalogues meanwhile sees the old file or the new one, never half of one."""
    built = []
    for po_path in sorted(directory.glob("*/LC_MESSAGES/*.po")):
        mo_path = po_path.with_suffix(".mo")
        if mo_path.exists() and mo_path.stat().st_mtime >= po_path.stat().st_mtime:
            continue
        with po_path.open("rb") as po:
            catalogue = read_po(po, locale=po_path.parent.parent.name)
        handle, temporary = tempfile.mkstemp(dir=mo_path.parent, suffix=".mo.tmp")
        try:
            with os.fdopen(handle, "wb") as mo:
                write_mo(mo, catalogue, use_fuzzy=False)
            os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide it from a server running as another user
            os.replace(temporary, mo_path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        built.append(mo_path)
    return built


def page_language(context: Context) -> str:
    """The language of the page being rendered, for a filter: ``render_template`` puts it in the page's context once
    (``_template_globals``), where a page's hundreds of figures read it; a macro of a template imported without
    context (``{% import ... %}``) and a template rendered outside ``render_template`` ask the request."""
    language = context.get("current_language")
    return language if isinstance(language, str) else current_language()


@pass_context
def _locale_quantity(context: Context, amount: int, kind: ResourceKind, places: int = 1) -> str:
    return formatting.quantity(amount, kind, places=places, locale=page_language(context))


@pass_context
def _locale_money(context: Context, cents: int, currency: str) -> str:
    return formatting.money(cents, currency, locale=page_language(context))


@pass_context
def _locale_number(context: Context, value: int | Decimal, places: int = 0) -> str:
    return formatting.number(value, places=places, locale=page_language(context))


@pass_context
def _locale_date(context: Context, value: Date | DateTime) -> str:
    return formatting.date(value, locale=page_language(context))


@pass_context
def _locale_datetime(context: Context, value: DateTime) -> str:
    return formatting.datetime(value, locale=page_language(context))


@pass_context
def _locale_hours(context: Context, seconds: int, places: int = 1) -> str:
    return formatting.hours(seconds, places=places, locale=page_language(context))


def page_translations(context: Context) -> NullTranslations:
    """The catalogue of the page being rendered, for the templates' ``_``, ``ngettext`` and ``pgettext``: looked up
    once per page (``_template_globals``) instead of once per message as Flask-Babel's own callables do; without the
    page's context (an imported macro, a bare template) the request's, as Flask-Babel would."""
    translations = context.get("page_translations")
    return translations if translations is not None else get_translations()


@pass_context
def _page_gettext(context: Context, message: str) -> str:
    return page_translations(context).ugettext(message)


@pass_context
def _page_ngettext(context: Context, singular: str, plural: str, n: int) -> str:
    return page_translations(context).ungettext(singular, plural, n)


@pass_context
def _page_pgettext(context: Context, message_context: str, message: str) -> str:
    return page_translations(context).upgettext(message_context, message)


@pass_context
def _page_npgettext(context: Context, message_context: str, singular: str, plural: str, n: int) -> str:
    return page_translations(context).unpgettext(message_context, singular, plural, n)


def _template_globals() -> dict[str, Any]:
    return {
        "current_language": current_language(),
        "page_translations": get_translations(),
        "language_choices": [(code, LANGUAGE_NAMES[code]) for code in enabled_languages()],
    }


def init_app(app: Flask) -> None:
    """Flask-Babel with the portal's locale selector, the switch's route, and the filters every figure on a page
    goes through: ``quantity``, ``money``, ``number``, ``date``, ``datetime``, ``hours``."""
    unknown = [code for code in app.extensions["portal.settings"].languages if code not in LANGUAGE_NAMES]
    if unknown:
        raise ValueError(f"PORTAL_LANGUAGES names languages without a catalogue: {', '.join(unknown)}")
    try:
        compile_catalogues()
    except OSError as exc:  # an installed, read-only package: its catalogues were compiled when it was built
        log.warning("cannot compile the translation catalogues in %s: %s", TRANSLATIONS, exc)
    Babel(app, locale_selector=select_language, default_translation_directories=str(TRANSLATIONS))
    app.jinja_env.install_gettext_callables(  # Flask-Babel's, with the catalogue looked up once per page
        gettext=_page_gettext,
        ngettext=_page_ngettext,
        pgettext=_page_pgettext,
        npgettext=_page_npgettext,
        newstyle=True,
    )
    login_manager.login_message = N_("Log in to see this page.")
    login_manager.localize_callback = gettext
    app.register_blueprint(bp)
    app.before_request(use_form_messages)  # WTForms' messages in lt and lv too
    app.context_processor(_template_globals)
    app.add_template_filter(_locale_quantity, "quantity")
    app.add_template_filter(_locale_money, "money")
    app.add_template_filter(_locale_number, "number")
    app.add_template_filter(_locale_date, "date")
    app.add_template_filter(_locale_datetime, "datetime")
    app.add_template_filter(_locale_hours, "hours")
