"""Five languages: every message translated in each, placeholders kept, the catalogue what extraction finds; the
language of a page chosen from the account, the switch, then the browser; figures written the locale's way."""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import subprocess
import sys
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
from babel import dates, numbers, units
from babel.messages.catalog import Catalog
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po
from babel.support import Translations
from babel.util import pathmatch
from flask import render_template_string
from portal_standin.devstack import free_port
from sqlmodel import Session

import portal
from portal import create_app, formatting
from portal.errors import DomainError
from portal.i18n import COOKIE, LANGUAGE_NAMES, MESSAGES_FROM_ELSEWHERE, compile_catalogues
from portal.identity.models import User
from tests.conftest import csrf_token
from tests.journeys.test_browser import (
    EIDAS,
    TIMEOUT_MS,
    add_person,
    assert_accessible,
    browser,
    log_in_at_provider,
    portal_url,
)
from tests.journeys.test_browser_phone import PHONE, assert_fits_the_phone

__all__ = ["browser", "portal_url"]  # the browser harness's fixtures (tests/journeys/test_browser.py)

REPO = Path(__file__).resolve().parents[2]
TRANSLATIONS = REPO / "portal" / "translations"
POT = TRANSLATIONS / "messages.pot"
EXTRACT = (
    f"{Path(sys.executable).parent / 'pybabel'} extract -F babel.cfg -k _l --no-wrap --sort-by-file -c Translators: "
    "--project='Baltic AI Factory portal' -o portal/translations/messages.pot ."
)
UPDATE = (
    f"{Path(sys.executable).parent / 'pybabel'} update -i portal/translations/messages.pot -d portal/translations "
    "--no-wrap --no-fuzzy-matching"
)

#: Files with translatable strings that are not in the catalogues yet (babel.cfg lists those that are). Each is
#: moved to babel.cfg once all its strings are wrapped and translated in every language; the list only shrinks
#: (an entry that matches nothing any more fails the test, so it is struck off).
PENDING: tuple[str, ...] = ()  # every file is in the catalogues (issue 14)
TRANSLATABLE_CALL = re.compile(r"(?<![\w.])(?:_|_l|lazy_gettext|gettext|ngettext|pgettext|npgettext|N_)\(\s*[\"']")
PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]|\{(\w+)\}")


def _read(path: Path) -> Catalog:
    with path.open("rb") as handle:
        return read_po(handle, locale=None if path.suffix == ".pot" else path.parent.parent.name)


def _key(message) -> tuple[str | None, str]:
    return message.context, message.id[0] if isinstance(message.id, tuple) else message.id


def _messages(catalogue: Catalog) -> dict:
    return {_key(m): m for m in catalogue if m.id}


def _placeholders(text: str) -> set[str]:
    return {a or b for a, b in PLACEHOLDER.findall(text)}


def test_every_message_is_translated_in_every_language() -> None:
    template = _messages(_read(POT))
    assert template, "the catalogue template is empty"
    problems = []
    for language in LANGUAGE_NAMES:
        catalogue = _read(TRANSLATIONS / language / "LC_MESSAGES" / "messages.po")
        translated = _messages(catalogue)
        for key, message in template.items():
            found = translated.get(key)
            forms = (found.string if isinstance(found.string, tuple) else (found.string,)) if found else ()
            if found is None or found.fuzzy or not forms or not all(forms):
                problems.append(f"{language}: {key[1]!r}" + (f" (context {key[0]!r})" if key[0] else ""))
            elif message.pluralizable and len(forms) != catalogue.num_plurals:
                problems.append(f"{language}: {key[1]!r} has {len(forms)} plural forms, not {catalogue.num_plurals}")
    assert not problems, "untranslated (or fuzzy) messages; translate them in the .po files:\n" + "\n".join(problems)


def test_every_translation_keeps_the_placeholders_of_its_message() -> None:
    problems = []
    for language in LANGUAGE_NAMES:
        for message in _read(TRANSLATIONS / language / "LC_MESSAGES" / "messages.po"):
            if not message.id:
                continue
            ids = message.id if isinstance(message.id, tuple) else (message.id,)
            forms = message.string if isinstance(message.string, tuple) else (message.string,)
            wanted = _placeholders(ids[-1])
            for form in forms:
                if form and _placeholders(form) != wanted:
                    problems.append(f"{language}: {form!r} has {sorted(_placeholders(form))}, not {sorted(wanted)}")
    assert not problems, "\n".join(problems)


def test_the_catalogue_template_is_what_extraction_finds(tmp_path: Path) -> None:
    written = tmp_path / "messages.pot"
    command = EXTRACT.replace("portal/translations/messages.pot", str(written))
    subprocess.run(command, shell=True, cwd=REPO, check=True, capture_output=True)  # noqa: S602 (our own command)
    extracted, committed = _messages(_read(written)), _messages(_read(POT))
    new, gone = sorted(set(extracted) - set(committed), key=str), sorted(set(committed) - set(extracted), key=str)
    assert not new and not gone, (
        f"portal/translations/messages.pot is out of date (new: {new}, gone: {gone}). Regenerate it with\n"
        f"  {EXTRACT}\nthen update the catalogues with\n  {UPDATE}\nand translate what is new in every language."
    )
    for language in LANGUAGE_NAMES:
        translated = _messages(_read(TRANSLATIONS / language / "LC_MESSAGES" / "messages.po"))
        stale = sorted(set(translated) - set(committed), key=str)
        assert not stale, f"{language} translates messages the template no longer has: {stale}; run\n  {UPDATE}"


def _catalogued_files() -> set[str]:
    with (REPO / "babel.cfg").open() as config:
        method_map, _options = parse_mapping_cfg(config)
    files = {str(p.relative_to(REPO)) for p in (REPO / "portal").rglob("*") if p.suffix in (".py", ".html")}
    return {f for f in files if any(pathmatch(pattern, f) for pattern, _method in method_map)}


def test_files_outside_the_catalogue_are_only_those_still_pending() -> None:
    catalogued = _catalogued_files()
    with_messages = {
        str(path.relative_to(REPO))
        for path in (REPO / "portal").rglob("*")
        if path.suffix in (".py", ".html") and TRANSLATABLE_CALL.search(path.read_text(encoding="utf-8"))
    } - {"portal/i18n.py"}
    outside = with_messages - catalogued
    unlisted = sorted(f for f in outside if not any(pathmatch(p, f) for p in PENDING))
    assert not unlisted, f"translatable strings outside the catalogues: add these files to babel.cfg: {unlisted}"
    done = [p for p in PENDING if not any(pathmatch(p, f) for f in outside)]
    assert not done, f"strike these off PENDING in tests/i18n/test_i18n.py, they are in the catalogues now: {done}"


def test_every_error_title_is_in_the_catalogue() -> None:
    """The title of each ``DomainError`` of every package is an API problem's ``title`` and an error page's heading."""
    for module in pkgutil.walk_packages(portal.__path__, "portal."):
        if ".migrations" not in module.name:
            importlib.import_module(module.name)

    def subclasses(cls: type) -> list[type]:
        return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]

    titles = {cls.title for cls in subclasses(DomainError)}
    assert titles <= set(MESSAGES_FROM_ELSEWHERE), sorted(titles - set(MESSAGES_FROM_ELSEWHERE))
    assert {("", t) for t in titles} <= {(c or "", i) for c, i in _messages(_read(POT))}


def test_catalogues_are_compiled_when_missing_or_older_than_their_po_and_fuzzy_entries_stay_out(tmp_path: Path) -> None:
    folder = tmp_path / "pl" / "LC_MESSAGES"
    folder.mkdir(parents=True)
    po = folder / "messages.po"
    po.write_text(
        'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n'
        'msgid "Log in"\nmsgstr "Zaloguj się"\n\n#, fuzzy\nmsgid "Log out"\nmsgstr "Wyjdź"\n',
        encoding="utf-8",
    )
    assert compile_catalogues(tmp_path) == [folder / "messages.mo"]
    assert compile_catalogues(tmp_path) == []  # up to date: nothing to do
    compiled = Translations.load(str(tmp_path), ["pl"])
    assert compiled.gettext("Log in") == "Zaloguj się" and compiled.gettext("Log out") == "Log out"

    po.write_text(po.read_text(encoding="utf-8").replace("#, fuzzy\n", ""), encoding="utf-8")
    later = (folder / "messages.mo").stat().st_mtime + 10
    os.utime(po, (later, later))
    assert compile_catalogues(tmp_path) == [folder / "messages.mo"]
    assert Translations.load(str(tmp_path), ["pl"]).gettext("Log out") == "Wyjdź"


# --- choosing the language ------------------------------------------------------------------------------

WELCOME = {
    "en": "Compute for the Baltic AI community",
    "pl": "Moc obliczeniowa dla bałtyckiej społeczności AI",
    "lt": "Skaičiavimo ištekliai Baltijos DI bendruomenei",
    "lv": "Skaitļošanas jauda Baltijas MI kopienai",
    "et": "Arvutusvõimsus Balti tehisintellekti kogukonnale",
}


@pytest.mark.parametrize(
    ("header", "language"),
    [
        ("pl-PL,pl;q=0.9,en;q=0.5", "pl"),
        ("lt", "lt"),
        ("de-DE,lv;q=0.7", "lv"),
        ("et-EE", "et"),
        ("en-GB", "en"),
        ("de-DE,fr;q=0.5", "en"),
    ],
)
def test_a_first_visit_is_answered_in_the_browsers_language(client, header: str, language: str) -> None:
    page = client.get("/", headers={"Accept-Language": header}).get_data(as_text=True)
    assert f'<html lang="{language}">' in page
    assert f"<h1>{WELCOME[language]}</h1>" in page


def test_the_switch_names_each_language_in_its_own_words_and_marks_the_current_one(client) -> None:
    page = client.get("/login", headers={"Accept-Language": "lv"}).get_data(as_text=True)
    assert '<strong lang="lv" aria-current="true">Latviešu</strong>' in page
    for code, name in (("en", "English"), ("pl", "Polski"), ("lt", "Lietuvių"), ("et", "Eesti")):
        assert (
            f'<button type="submit" name="language" value="{code}" lang="{code}" class="link">{name}</button>' in page
        )
    assert '<input type="hidden" name="next" value="/login">' in page
    assert "<h1>Pieteikties</h1>" in page


def test_the_switch_is_remembered_by_the_browser_above_its_accept_language(client) -> None:
    token = csrf_token(client, "/login")
    response = client.post("/language", data={"csrf_token": token, "language": "lt", "next": "/login?next=/account"})
    assert response.status_code == 302 and response.headers["Location"] == "/login?next=/account"
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None and cookie.value == "lt" and cookie.http_only
    page = client.get("/", headers={"Accept-Language": "pl"}).get_data(as_text=True)
    assert '<html lang="lt">' in page and f"<h1>{WELCOME['lt']}</h1>" in page


def test_the_switch_saves_the_choice_on_the_account_for_every_browser(app, client, login, db: Session) -> None:
    user = login(client, "linguist-1")
    response = client.post(
        "/language", data={"csrf_token": csrf_token(client, "/"), "language": "et", "next": "/account"}
    )
    assert response.status_code == 302 and response.headers["Location"] == "/account"
    assert db.get(User, user.id).preferred_language == "et"

    elsewhere = app.test_client()  # another browser, set to Polish, no cookie of the choice
    login(elsewhere, "linguist-1")
    page = elsewhere.get("/", headers={"Accept-Language": "pl"}).get_data(as_text=True)
    assert '<html lang="et">' in page and ">Logi välja (" in page and ">Töölaud<" in page


def test_a_choice_made_before_logging_in_is_kept_on_an_account_without_one(client, login, db: Session) -> None:
    client.post("/language", data={"csrf_token": csrf_token(client, "/login"), "language": "lv"})
    user = login(client, "linguist-2")
    assert db.get(User, user.id).preferred_language == "lv"

    client.post("/language", data={"csrf_token": csrf_token(client, "/"), "language": "pl"})
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    client.set_cookie(COOKIE, "et")  # another choice in this browser does not overrule the account's
    login(client, "linguist-2")
    db.expire_all()
    assert db.get(User, user.id).preferred_language == "pl"
    assert '<html lang="pl">' in client.get("/").get_data(as_text=True)


def test_the_switch_refuses_a_language_not_offered_and_a_missing_csrf_token(make_settings) -> None:
    client = create_app(make_settings(languages=["en", "pl"])).test_client()
    page = client.get("/login").get_data(as_text=True)
    assert ">Polski<" in page and "Lietuvių" not in page
    refused = client.post("/language", data={"csrf_token": csrf_token(client, "/login"), "language": "lt"})
    assert refused.status_code == 400 and "Choose one of the languages offered." in refused.get_data(as_text=True)
    assert client.get_cookie(COOKIE) is None
    forged = client.post("/language", data={"language": "pl"})
    assert forged.status_code == 400 and "Form expired" in forged.get_data(as_text=True)
    assert 'name="next"' not in forged.get_data(as_text=True)  # the switch there leads home, not to a POST route
    assert client.get_cookie(COOKIE) is None
    with pytest.raises(ValueError, match="without a catalogue: de"):
        create_app(make_settings(languages=["en", "de"]))


def test_the_switch_returns_only_to_pages_of_the_portal(client) -> None:
    token = csrf_token(client, "/login")
    response = client.post("/language", data={"csrf_token": token, "language": "pl", "next": "https://evil.example/"})
    assert response.headers["Location"] == "/"


def test_error_pages_and_the_login_flows_messages_are_in_the_chosen_language(client, login) -> None:
    missing = client.get("/no-such-page", headers={"Accept-Language": "et"})
    page = missing.get_data(as_text=True)
    assert missing.status_code == 404 and '<html lang="et">' in page and "<h1>Ei leitud</h1>" in page
    assert "Tagasi töölauale" in page

    unknown = client.get("/login/nobody", headers={"Accept-Language": "lt"}).get_data(as_text=True)
    assert "Tokio prisijungimo paslaugos teikėjo nėra." in unknown

    polish = {"Accept-Language": "pl"}
    sent_to_login = client.get("/account", headers=polish, follow_redirects=True).get_data(as_text=True)
    assert "Zaloguj się, aby zobaczyć tę stronę." in sent_to_login

    login(client)
    logout = client.post("/logout", data={"csrf_token": csrf_token(client, "/")}, headers=polish, follow_redirects=True)
    assert "Wylogowano." in logout.get_data(as_text=True)


def test_api_problems_follow_accept_language_and_default_to_english(client) -> None:
    latvian = client.get("/api/v1/projects", headers={"Accept-Language": "lv"})
    assert latvian.status_code == 401 and latvian.mimetype == "application/problem+json"
    assert latvian.json["title"] == "Nepieciešama autentifikācija"
    missing = client.get("/api/v1/no-such-thing", headers={"Accept-Language": "pl"})
    assert missing.status_code == 404 and missing.json["title"] == "Nie znaleziono"
    assert missing.json["detail"].startswith("Nie znaleziono żądanego adresu na serwerze.")
    assert client.get("/api/v1/no-such-thing").json["title"] == "Not Found"


def test_the_api_ignores_the_browsers_choice_of_the_pages_language(client) -> None:
    client.set_cookie(COOKIE, "lt")
    assert client.get("/api/v1/no-such-thing", headers={"Accept-Language": "et"}).json["title"] == "Ei leitud"


# --- figures --------------------------------------------------------------------------------------------

NBSP, NNBSP = "\N{NO-BREAK SPACE}", "\N{NARROW NO-BREAK SPACE}"
MOMENT = datetime(2026, 3, 5, 14, 7, tzinfo=UTC)


@pytest.mark.parametrize(
    ("locale", "money", "day", "moment", "number"),
    [
        ("en", "€1,234.50", "Mar 5, 2026", f"Mar 5, 2026, 2:07{NNBSP}PM UTC", "1,234,567"),
        ("pl", f"1{NBSP}234,50{NBSP}€", "5 mar 2026", "5 mar 2026, 14:07 UTC", f"1{NBSP}234{NBSP}567"),
        ("lt", f"1{NBSP}234,50{NBSP}€", "2026-03-05", "2026-03-05 14:07 UTC", f"1{NBSP}234{NBSP}567"),
        ("lv", f"1{NBSP}234,50{NBSP}€", "2026. gada 5. marts", "2026. gada 5. marts 14:07 UTC", f"1{NBSP}234{NBSP}567"),
        ("et", f"1{NBSP}234,50{NBSP}€", "5. märts 2026", "5. märts 2026 14:07 UTC", f"1{NBSP}234{NBSP}567"),
    ],
)
def test_money_dates_and_numbers_are_written_the_locales_way(
    locale: str, money: str, day: str, moment: str, number: str
) -> None:
    assert formatting.money(123450, "EUR", locale=locale) == money
    assert formatting.date(date(2026, 3, 5), locale=locale) == day
    assert formatting.datetime(MOMENT, locale=locale) == moment
    assert formatting.number(1234567, locale=locale) == number


def test_figures_are_exact_and_english_stays_as_it_was() -> None:
    assert formatting.money(-7505, "EUR") == "-€75.05"
    assert formatting.money(1, "EUR", locale="pl") == f"0,01{NBSP}€"
    assert formatting.quantity(123456789, "gpu") == "34,293.6 GPU-hours"  # half up: 34293.5525 h
    assert formatting.display_amount(-180, "gpu", places=2) == "-0.05"
    assert formatting.quantity(9000, "cpu", locale="et") == "2,5 tuumatundi"  # outside a request too (e-mails)
    assert formatting.hours(9000) == "2.5 hr" and formatting.hours(9000, locale="pl") == "2,5 godz."
    # a datetime late on the 5th in UTC is the 5th, wherever the server runs; a naive one is read as UTC
    assert formatting.date(datetime(2026, 3, 5, 23, 59, tzinfo=UTC)) == "Mar 5, 2026"
    assert formatting.datetime(datetime(2026, 3, 5, 14, 7)) == f"Mar 5, 2026, 2:07{NNBSP}PM UTC"


@pytest.mark.parametrize("locale", sorted(LANGUAGE_NAMES))
def test_figures_are_what_babel_writes_from_the_locales_name_and_the_pattern(locale: str) -> None:
    """``formatting`` parses each locale and pattern once per process and writes plain numbers with Python's
    Decimal formatting; what it writes is what Babel writes parsing them on every call (as it did before)."""
    for places in range(4):
        pattern = "#,##0" + ("." + "0" * places if places else "")
        for value in (0, -1, 1234567, Decimal("0.005"), Decimal("-0.004"), Decimal("-2.5"), Decimal("1234.4449")):
            exact = Decimal(value).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
            assert formatting.number(value, places=places, locale=locale) == numbers.format_decimal(
                exact, format=pattern, locale=locale
            )
        for seconds in (0, -14, 9000, 1800, 5_000_000_007):
            exact = (Decimal(seconds) / 3600).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
            assert formatting.hours(seconds, places=places, locale=locale) == units.format_unit(
                exact, "duration-hour", length="short", format=pattern, locale=locale
            )
    assert formatting.money(-123456789, "EUR", locale=locale) == numbers.format_currency(
        Decimal("-1234567.89"), "EUR", locale=locale
    )
    # the time of day is written once per minute and locale (to the minute, the seconds do not matter)
    for hour, minute, second in ((23, 59, 0), (0, 0, 0), (0, 59, 59), (11, 59, 30), (12, 0, 1), (13, 7, 0)):
        moment = datetime(2026, 12, 31, hour, minute, second, tzinfo=UTC)
        assert formatting.date(moment, locale=locale) == dates.format_date(
            moment.date(), format="medium", locale=locale
        )
        written = dates.get_datetime_format("medium", locale=locale).format(
            dates.format_time(moment, format="short", tzinfo=UTC, locale=locale),
            dates.format_date(moment.date(), format="medium", locale=locale),
        )
        assert formatting.datetime(moment, locale=locale) == f"{written} UTC"


def test_the_pages_filters_write_figures_in_the_requests_language(app) -> None:
    template = "{{ 123450|money('EUR') }} | {{ 9000|quantity('gpu') }} | {{ 1234|number }} | {{ day|date }}"
    with app.test_request_context("/", headers={"Accept-Language": "pl"}):
        assert render_template_string(template, day=date(2026, 3, 5)) == (
            f"1{NBSP}234,50{NBSP}€ | 2,5 godz. GPU | 1{NBSP}234 | 5 mar 2026"
        )
    with app.test_request_context("/", headers={"Accept-Language": "lt"}):
        assert render_template_string("{{ 7200|quantity('cpu', places=0) }} | {{ m|datetime }}", m=MOMENT) == (
            "2 branduolio val. | 2026-03-05 14:07 UTC"
        )
    with app.test_request_context("/"):
        assert render_template_string(template, day=date(2026, 3, 5)) == (
            "€1,234.50 | 2.5 GPU-hours | 1,234 | Mar 5, 2026"
        )


def test_filters_without_the_pages_context_follow_the_request_too(app) -> None:
    """A page's filters and messages read its language and catalogue from the page's context; a macro of a template
    imported without context and a template rendered outside ``render_template`` have none, and ask the request."""
    with app.test_request_context("/", headers={"Accept-Language": "pl"}):
        labels = (
            '{% import "market/_labels.html" as labels %}{{ labels.months(1234) }}, {{ labels.order_state("paid") }}'
        )
        assert render_template_string(labels) == f"1{NBSP}234 miesiące, opłacone"
        bare = app.jinja_env.from_string("{{ 1234.5|number(1) }} {{ day|date }} {{ pgettext('order state', 'paid') }}")
        assert bare.render(day=date(2026, 3, 5)) == f"1{NBSP}234,5 5 mar 2026 opłacone"


def test_the_page_for_a_database_outage_is_in_the_browsers_language(make_settings) -> None:
    """It asks the database nothing, not even who is logged in: the language comes from the cookie or the header."""
    nowhere = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/portal"
    client = create_app(make_settings(database_url=nowhere, database_connect_timeout_seconds=1)).test_client()
    client.set_cookie(COOKIE, "lv")
    with client.session_transaction() as browser_session:
        browser_session["_user_id"], browser_session["web_session"] = "1", "a-session-key"
    page = client.get("/")
    assert page.status_code == 503
    assert '<html lang="lv">' in page.get_data(as_text=True)
    assert "<h1>Pakalpojums īslaicīgi nav pieejams</h1>" in page.get_data(as_text=True)
    api = client.get("/api/v1/projects", headers={"Authorization": "Bearer some-token", "Accept-Language": "et"})
    assert api.status_code == 503 and api.json["title"] == "Teenus pole ajutiselt saadaval"


# --- in a browser ---------------------------------------------------------------------------------------


def test_a_polish_browser_gets_polish_pages_and_the_switch_changes_the_language_in_place(
    portal_url,
    browser,
    oidc_provider,
) -> None:
    context = browser.new_context(locale="pl-PL", viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    context.route("https://cdn.jsdelivr.net/**", lambda route: route.abort())
    page = context.new_page()
    try:
        page.goto(f"{portal_url}/")
        assert page.locator("html").get_attribute("lang") == "pl"
        page.get_by_role("heading", level=1, name=WELCOME["pl"]).wait_for()
        assert_accessible(page, "Polish welcome page")

        page.goto(f"{portal_url}/login?next=/account")
        page.get_by_role("button", name="Lietuvių").click()
        page.wait_for_url(f"{portal_url}/login?next=/account")
        assert page.locator("html").get_attribute("lang") == "lt"
        page.get_by_role("heading", level=1, name="Prisijungti").wait_for()
        assert_accessible(page, "Lithuanian login page")

        sub, _email = add_person(oidc_provider, "Rūta", "Vaitkutė", acr=EIDAS + "substantial")
        page.get_by_role("link", name="eIDAS").click()
        log_in_at_provider(page, oidc_provider, sub)
        page.wait_for_url(f"{portal_url}/account")
        page.get_by_role("button", name="Eesti").click()
        page.wait_for_url(f"{portal_url}/account")
        assert page.locator("html").get_attribute("lang") == "et"
        page.get_by_role("link", name="Töölaud").wait_for()
        assert_accessible(page, "Estonian account page")
    finally:
        context.close()


@pytest.mark.parametrize("language", ["pl", "lt", "lv", "et"])
def test_the_translated_pages_fit_a_phone_and_stay_accessible(portal_url, browser, language: str) -> None:
    """Long Lithuanian and Estonian words must not push a page sideways, nor the header past its height."""
    context = browser.new_context(locale=language, viewport=PHONE, is_mobile=True, has_touch=True)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    try:
        for path, what in (("/", "welcome page"), ("/login", "login page"), ("/no-such-page", "error page")):
            page.goto(f"{portal_url}{path}")
            assert page.locator("html").get_attribute("lang") == language
            assert_fits_the_phone(page, f"{language} {what}")
    finally:
        context.close()
