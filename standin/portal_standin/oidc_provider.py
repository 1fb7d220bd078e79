"""The local OpenID Connect provider of ``portal demo`` and the tests: ``oidc-provider-mock``'s provider, with a
login page that names each predefined person and says who they are, so that a newcomer picks the right one.

``OIDCProviderProcess`` runs it as ``python -m portal_standin.oidc_provider``; the options are those of the
``oidc-provider-mock`` command it replaces, plus ``--who`` (a JSON object: subject -> what that person is).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from datetime import timedelta
from typing import Any

import flask
import oidc_provider_mock
from jinja2 import ChoiceLoader, DictLoader, PackageLoader
from werkzeug.serving import run_simple

#: Replaces the package's ``authorization_form.html``: the same two forms (a ``sub`` field with Authorize, and
#: Deny), and the predefined and recent people as a table of name, what they are, level of assurance and subject.
AUTHORIZATION_FORM = """{% extends "_base.html" %}
{% block content %}
<style>.container { max-width: 64rem; }</style>
<h1>Log in at this demo provider</h1>
<p>The portal (client <code>{{ client_id }}</code>) asks who you are. Pick a person below, or type a subject.</p>
{% macro people_table(subjects, heading_id, heading) %}
<h2 id="{{ heading_id }}">{{ heading }}</h2>
<form method="post" aria-labelledby="{{ heading_id }}">
<table>
  <thead><tr><th scope="col">Log in as</th><th scope="col">Who they are</th>
    <th scope="col">Level of assurance</th><th scope="col">Subject (code)</th></tr></thead>
  <tbody>
  {% for sub in subjects %}{% set person = demo_person(sub) %}
    <tr>
      <td><button class="outline" style="width: auto; margin: 0" type="submit" name="sub" value="{{ sub }}">
        {{- person.name or sub }}</button></td>
      <td>{{ person.who }}</td>
      <td>{{ person.acr }}</td>
      <td><code>{{ sub }}</code></td>
    </tr>
  {% endfor %}
  </tbody>
</table>
</form>
{% endmacro %}
{% if predefined_users %}{{ people_table(predefined_users, "heading-auth-predefined", "Demo people") }}{% endif %}
{% if recent_subjects %}{{ people_table(recent_subjects, "heading-auth-previous", "People who logged in before") }}
{% endif %}
<h2 id="heading-auth-other">Someone else</h2>
<form method="post" aria-labelledby="heading-auth-other">
  <label for="sub">Subject{% if sub_missing %} <small id="sub-missing">(the field is missing)</small>{% endif %}
  <input type="text" id="sub" name="sub" placeholder="sub" required autofocus
    {% if sub_missing %}aria-invalid="true" aria-describedby="sub-missing"{% endif %} /></label>
  <button type="submit">Authorize</button>
</form>
<form method="post">
  <button type="submit" name="action" value="deny" class="contrast">Deny</button>
</form>
<p>You will be redirected to {{ redirect_uri }}</p>
{% endblock %}
"""


def provider_app(*, user_claims: list[dict[str, Any]], who: dict[str, str], **options: Any) -> flask.Flask:
    """oidc-provider-mock's app (``options`` are ``init_app``'s) whose login page describes the people."""
    app = flask.Flask(__name__)
    app.jinja_loader = ChoiceLoader(
        [DictLoader({"authorization_form.html": AUTHORIZATION_FORM}), PackageLoader("oidc_provider_mock")]
    )
    users = [
        oidc_provider_mock.User(sub=c["sub"], claims={k: v for k, v in c.items() if k != "sub"}) for c in user_claims
    ]
    oidc_provider_mock.init_app(app, user_claims=users, **options)
    app.secret_key = os.urandom(16)

    @app.context_processor
    def people() -> dict[str, Any]:
        def demo_person(sub: str) -> dict[str, str]:
            user = flask.g.oidc_provider_mock_storage.get_user(sub)
            claims = user.claims if user is not None else {}
            name = " ".join(str(claims[k]) for k in ("given_name", "family_name") if claims.get(k))
            level = str(claims.get("acr", "")).rsplit("/", 1)[-1]  # "http://eidas.europa.eu/LoA/high": "high"
            return {"name": name, "who": who.get(sub, ""), "acr": level}

        return {"demo_person": demo_person}

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m portal_standin.oidc_provider", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9400)
    parser.add_argument("--require-nonce", choices=["true", "false"], default="false")
    parser.add_argument("--token-max-age", type=int, default=3600, help="lifetime of ID and access tokens, seconds")
    parser.add_argument("--user-claims", action="append", default=[], help="a predefined person's claims (JSON)")
    parser.add_argument("--who", default="{}", help="JSON object: subject -> what that person is")
    args = parser.parse_args(argv)
    os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"  # plain http on 127.0.0.1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = provider_app(
        user_claims=[json.loads(c) for c in args.user_claims],
        who=json.loads(args.who),
        require_nonce=args.require_nonce == "true",
        access_token_max_age=timedelta(seconds=args.token_max_age),
    )
    run_simple(args.host, args.port, app, threaded=True, use_reloader=False)


if __name__ == "__main__":
    main()
