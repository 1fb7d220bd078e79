"""Login with OIDC providers, the account page, identity linking, API tokens and factory roles."""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, abort, flash, jsonify, redirect, render_template, request, session, url_for
from flask_babel import gettext, ngettext, pgettext
from flask_login import current_user, login_required, login_user, logout_user

from portal.authz import Action, require
from portal.db import get_db
from portal.errors import InvalidInput, LoginRefused
from portal.forms import ActionForm, ReasonForm, apply_errors
from portal.i18n import adopt_browser_language
from portal.identity import oidc, services
from portal.identity.forms import FACTORY_ROLES, GrantRoleForm, TokenForm
from portal.identity.models import FactoryRole, User
from portal.web import actor, current_login, current_web_session, safe_next, settings

bp = Blueprint("identity", __name__)


@bp.app_template_filter("factory_role")
def factory_role_label(role: str) -> str:
    """A factory role as the pages name it, in the reader's language."""
    return str(FACTORY_ROLES[FactoryRole(role)])


#: The eIDAS levels of assurance in the glossary's words, each looked up in the catalogue only when shown.
_ASSURANCE_LEVELS = {
    "low": lambda: pgettext("eIDAS level of assurance", "low"),
    "substantial": lambda: pgettext("eIDAS level of assurance", "substantial"),
    "high": lambda: pgettext("eIDAS level of assurance", "high"),
}


@bp.app_template_filter("assurance_level")
def assurance_level_label(level: str) -> str:
    """An eIDAS level of assurance in the reader's language (the glossary's words)."""
    word = _ASSURANCE_LEVELS.get(str(level))
    return word() if word is not None else str(level)


def _provider_or_404(name: str):
    provider = settings().provider(name)
    if provider is None:
        abort(404, gettext("No such login provider."))
    return provider


def _callback_url(name: str) -> str:
    return f"{settings().base_url}{url_for('identity.callback', name=name)}"


@bp.get("/login")
def login():
    if current_user.is_authenticated:
        return redirect(safe_next(request.args.get("next")))
    return render_template(
        "identity/login.html", providers=settings().oidc_providers, next=request.args.get("next", "")
    )


@bp.get("/login/<name>")
def start_login(name: str):
    provider = _provider_or_404(name)
    session["login_next"] = safe_next(request.args.get("next"))
    session.pop("link_for_user", None)
    return oidc.redirect_to_provider(provider, _callback_url(name))


@bp.get("/login/<name>/callback")
def callback(name: str):
    provider = _provider_or_404(name)
    linking_user_id = session.pop("link_for_user", None)
    try:
        claims = oidc.verified_claims(provider)
        asserted = services.read_assertion(provider, claims)
        linking_user = None
        if linking_user_id is not None:
            if not current_user.is_authenticated or current_user.id != linking_user_id:
                raise LoginRefused(gettext("Log in again before linking another identity."))
            linking_user = actor()
        user, login = services.record_login(get_db(), asserted, linking_user=linking_user)
    except LoginRefused as exc:
        get_db().rollback()
        return (
            render_template("identity/refused.html", title=gettext(exc.title), detail=exc.detail, provider=provider),
            exc.status,
        )
    if linking_user is not None:
        flash(gettext("Your %(provider)s identity is now linked to your account.", provider=provider.label), "success")
        return redirect(url_for("identity.account"))
    adopt_browser_language(get_db(), user)
    next_url = session.pop("login_next", "/")
    session.clear()  # a fresh session on every login: no fixation
    lifetime = timedelta(hours=settings().session_lifetime_hours)
    session["web_session"] = services.start_web_session(get_db(), user, login, lifetime=lifetime)
    login_user(user)
    session["login_id"] = login.id
    session.permanent = True
    return redirect(safe_next(next_url))


@bp.post("/logout")
def logout():
    if not ActionForm().validate_on_submit():
        abort(400)
    key = session.get("web_session")
    if isinstance(key, str):
        services.end_web_session(get_db(), key)  # a copy of the cookie is worth nothing from now on
    logout_user()
    session.clear()
    flash(gettext("You are logged out."), "info")
    return redirect(url_for("identity.login"))


@bp.post("/account/sessions/end-all")
@login_required
def logout_everywhere():
    """End every session of the user, in every browser, this one included (and the hub logins made in them)."""
    if not ActionForm().validate_on_submit():
        abort(400)
    ended = services.end_sessions_of(get_db(), actor(), reason="logout_everywhere")
    logout_user()
    session.clear()
    message = ngettext(
        "You are logged out everywhere (%(num)d session ended).",
        "You are logged out everywhere (%(num)d sessions ended).",
        ended,
    )
    flash(message, "info")
    return redirect(url_for("identity.login"))


@bp.get("/account")
@login_required
def account():
    db = get_db()
    me = actor()
    identities = services.identities_of(db, me)
    linked = {i.provider for i in identities}
    return render_template(
        "identity/account.html",
        identities=identities,
        providers={p.name: p for p in settings().oidc_providers},
        linkable=[p for p in settings().oidc_providers if p.name not in linked],
        tokens=services.api_tokens_of(db, me),
        token_form=TokenForm(),
        action_form=ActionForm(),
        new_token=None,
        web_session=current_web_session(),
        live_sessions=services.live_sessions_of(db, me),
    )


@bp.get("/account/export")
@login_required
def export_account():
    """The user's personal data as a JSON download (the same document as ``GET /api/v1/me/export``)."""
    from portal.identity.personal_data import export_personal_data

    response = jsonify(export_personal_data(get_db(), actor()))
    response.headers["Content-Disposition"] = f'attachment; filename="my-data-{actor().id}.json"'
    return response


@bp.post("/account/identities/link/<name>")
@login_required
def link_identity(name: str):
    provider = _provider_or_404(name)
    if not ActionForm().validate_on_submit():
        abort(400)
    session["link_for_user"] = current_user.id
    return oidc.redirect_to_provider(provider, _callback_url(name))


@bp.post("/account/identities/<int:identity_id>/unlink")
@login_required
def unlink_identity(identity_id: int):
    if not ActionForm().validate_on_submit():
        abort(400)
    services.unlink_identity(get_db(), actor(), identity_id, current_login=current_login())
    flash(gettext("The identity is unlinked."), "success")
    return redirect(url_for("identity.account"))


@bp.post("/account/tokens")
@login_required
def create_token():
    db = get_db()
    form = TokenForm()
    new_token = None
    status = 200
    if form.validate_on_submit():
        try:
            _token, new_token = services.create_api_token(
                db,
                actor(),
                name=form.name.data or "",
                scopes=form.scopes.data or [],
                ttl_days=form.ttl_days.data or 0,
                login=current_login(),
            )
        except InvalidInput as exc:
            apply_errors(form, exc)
            status = 422
    else:
        status = 422
    identities = services.identities_of(db, actor())
    linked = {i.provider for i in identities}
    return (
        render_template(
            "identity/account.html",
            identities=identities,
            providers={p.name: p for p in settings().oidc_providers},
            linkable=[p for p in settings().oidc_providers if p.name not in linked],
            tokens=services.api_tokens_of(db, actor()),
            token_form=TokenForm(formdata=None) if new_token else form,
            action_form=ActionForm(),
            new_token=new_token,
            web_session=current_web_session(),
            live_sessions=services.live_sessions_of(db, actor()),
        ),
        status,
    )


@bp.post("/account/tokens/<int:token_id>/revoke")
@login_required
def revoke_token(token_id: int):
    if not ActionForm().validate_on_submit():
        abort(400)
    token = services.revoke_api_token(get_db(), actor(), token_id)
    flash(gettext("The token “%(name)s” is revoked.", name=token.name), "success")
    return redirect(url_for("identity.account"))


def _users_page(errors: dict[int, str] | None = None, status: int = 200):
    """The users page; ``errors`` (user id -> message) shows why a grant or revocation was refused."""
    rows = services.list_users(get_db(), actor(), query=request.args.get("q", ""))
    return render_template(
        "identity/users.html",
        rows=rows,
        grant_form=GrantRoleForm(formdata=None),
        revoke_form=ReasonForm(formdata=None),
        errors=errors or {},
        q=request.args.get("q", ""),
    ), status


@bp.get("/admin/users")
@login_required
def users():
    return _users_page()


@bp.post("/admin/users/<int:user_id>/roles")
@login_required
def grant_role(user_id: int):
    db = get_db()
    form = GrantRoleForm()
    if not form.validate_on_submit():
        abort(400)
    require(db, actor(), Action.GRANT_ROLES)  # before looking the user up: ids reveal nothing
    user = db.get(User, user_id)
    if user is None:
        abort(404)
    try:
        services.grant_role(db, actor(), user, FactoryRole(form.role.data), reason=form.reason.data or "")
    except InvalidInput as exc:
        db.rollback()
        return _users_page({user.id: exc.detail}, 422)
    role = factory_role_label(form.role.data)
    flash(gettext("%(name)s is now %(role)s.", name=user.display_name, role=role), "success")
    return redirect(url_for("identity.users"))


@bp.post("/admin/users/<int:user_id>/roles/<role>/revoke")
@login_required
def revoke_role(user_id: int, role: str):
    db = get_db()
    form = ReasonForm()
    if not form.validate_on_submit():
        abort(400)
    require(db, actor(), Action.GRANT_ROLES)
    user = db.get(User, user_id)
    if user is None or role not in {r.value for r in FactoryRole}:
        abort(404)
    try:
        services.revoke_role(db, actor(), user, FactoryRole(role), reason=form.reason.data or "")
    except InvalidInput as exc:
        db.rollback()
        return _users_page({user.id: exc.detail}, 422)
    flash(gettext("%(name)s is no longer %(role)s.", name=user.display_name, role=factory_role_label(role)), "success")
    return redirect(url_for("identity.users"))
