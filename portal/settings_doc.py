"""The settings reference, docs/settings.md, generated from the declarations in ``portal/config.py`` (each
setting's type, default and ``description=``) by ``scripts/settings-doc``; tests/operations/test_docs.py fails
while the file differs from what this writes."""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from portal.config import (
    MIN_SECRET_LENGTH,
    SECRET_SETTINGS,
    NotebookProfile,
    OIDCProvider,
    Settings,
    SlurmClusterConfig,
)

SETTINGS_DOC_COMMAND = "scripts/settings-doc"

_SETTINGS_DOC_INTRO = """\
# Settings reference

<!-- Generated from portal/config.py by `{command}`; do not edit: tests/operations/test_docs.py fails when this file
differs from what the command writes. Change a setting's `description=` instead. -->

One settings object, `Settings` in `portal/config.py`. Values come, in rising order of precedence, from the
defaults below (which run the embedded demo), an optional TOML file named by `PORTAL_CONFIG` (names in lower
case, lists of tables as `[[oidc_providers]]`), and `PORTAL_*` environment variables (lists and tables as JSON).
Secrets belong in the environment only: their values are never shown here.

`PORTAL_ENV=production` refuses to start, naming every problem at once, with SQLite, without an `https://` base
URL, with a secret key or metrics token shorter than {min_secret} characters, with the development Stripe or hub
secrets, with a secret still holding `.env.example`'s `change-me`, with secrets in the `PORTAL_CONFIG` file, or
without a login provider.

Each login provider's client secret comes from `PORTAL_OIDC_<NAME>_CLIENT_SECRET` (`<NAME>`: its `name` in
upper case, `-` as `_`) when its entry does not give one. The JupyterHub reads the settings it shares with the
portal (`PORTAL_HUB_OAUTH_*`, `PORTAL_HUB_SPAWN_CHECK_TOKEN`, `PORTAL_HUB_API_TOKEN`,
`PORTAL_HUB_SLURM_CLUSTER`) under the same names: give both the same values.
"""

_SETTINGS_DOC_SECTIONS: tuple[tuple[str, str, type[BaseModel]], ...] = (
    ("OIDC providers", "Each entry of `oidc_providers`. The redirect URI to register at each provider is "
     "`<PORTAL_BASE_URL>/login/<name>/callback`.", OIDCProvider),
    ("Slurm clusters", "Each entry of `slurm_clusters`.", SlurmClusterConfig),
    ("Notebook profiles", "Each entry of `notebook_profiles`.", NotebookProfile),
)  # fmt: skip

#: Secrets whose value outside production is a development stand-in (production refuses it).
_STAND_IN_SECRETS = {"stripe_api_key", "stripe_webhook_secret", "hub_oauth_client_secret", "hub_spawn_check_token",
                     "hub_api_token"}  # fmt: skip


def _markdown(text: str) -> str:
    """A description in Markdown: reST's double backticks as single ones, table pipes escaped."""
    return text.replace("``", "`").replace("|", "\\|")


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return " or ".join(f"`{value}`" for value in get_args(annotation))
    text = annotation.__name__ if isinstance(annotation, type) and not get_args(annotation) else repr(annotation)
    text = re.sub(r"\b[a-z_]+(?:\.[a-z_]+)*\.(?=[A-Za-z])", "", text)
    text = text.replace("NoneType", "None").replace("<enum '", "").replace("'>", "")
    return f"`{text}`".replace("|", "\\|")


def _default_text(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, list) and value and all(isinstance(item, BaseModel) for item in value):
        return ", ".join(f"`{getattr(item, 'name', item)}`" for item in value)
    if isinstance(value, StrEnum):
        value = value.value
    if value is None:
        return "(none)"
    if value == "":
        return "(empty)"
    if isinstance(value, list | dict):
        return f"`{json.dumps(value, ensure_ascii=False)}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`".replace("|", "\\|")


def settings_reference() -> str:
    """docs/settings.md: every setting with its environment variable, type, default and description."""
    lines = [_SETTINGS_DOC_INTRO.format(command=SETTINGS_DOC_COMMAND, min_secret=MIN_SECRET_LENGTH)]
    lines += ["## Settings", "", "| setting | environment variable | type | default | meaning |"]
    lines.append("| --- | --- | --- | --- | --- |")
    for name, field in Settings.model_fields.items():
        if name in SECRET_SETTINGS:
            default = "secret: a development stand-in" if name in _STAND_IN_SECRETS else "secret: unset"
        else:
            default = _default_text(field)
        description = _markdown(field.description or "")
        lines.append(
            f"| `{name}` | `PORTAL_{name.upper()}` | {_type_name(field.annotation)} | {default} | {description} |"
        )
    for title, intro, model in _SETTINGS_DOC_SECTIONS:
        lines += ["", f"## {title}", "", intro, "", "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for name, field in model.model_fields.items():
            secret = name == "client_secret"
            default = "secret: `PORTAL_OIDC_<NAME>_CLIENT_SECRET`" if secret else _default_text(field)
            lines.append(
                f"| `{name}` | {_type_name(field.annotation)} | {default} | {_markdown(field.description or '')} |"
            )
    return "\n".join(lines) + "\n"
