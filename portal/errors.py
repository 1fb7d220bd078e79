"""Domain errors every package raises; the web and API layers map them to a response in one place.

A detail (and each field's message) may be a ``portal.messages.Message``: it is then read in the language of the
request that shows it (a page's, or the API's ``Accept-Language``), in English everywhere else (the CLI, logs,
tests). ``detail`` and ``errors`` always give strings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from portal.messages import Text


class DomainError(Exception):
    """An error a caller is expected to handle; ``status`` is the HTTP status it maps to."""

    status = 400
    title = "Request refused"

    def __init__(self, detail: str | Text, *, errors: Mapping[str, str | Text] | None = None) -> None:
        super().__init__(detail)
        self._detail = detail
        self._errors = dict(errors or {})

    @property
    def detail(self) -> str:
        return str(self._detail)

    @property
    def errors(self) -> dict[str, str]:
        """Field name -> message, for forms and problem details."""
        return {name: str(message) for name, message in self._errors.items()}

    @property
    def type_slug(self) -> str:
        name = type(self).__name__
        return "".join("-" + c.lower() if c.isupper() else c for c in name).lstrip("-")


class NotFound(DomainError):
    """The object does not exist, or the actor may not know that it does."""

    status = 404
    title = "Not found"


class NotAuthorised(DomainError):
    status = 403
    title = "Not allowed"


class InvalidInput(DomainError):
    status = 422
    title = "Invalid input"


class Conflict(DomainError):
    status = 409
    title = "Conflict"


class AuthenticationRequired(DomainError):
    status = 401
    title = "Authentication required"


class LoginRefused(DomainError):
    """An OIDC login that failed a check (state, nonce, issuer, audience, expiry, level of assurance)."""

    status = 403
    title = "Login refused"


class InsufficientAssurance(LoginRefused):
    title = "Level of assurance too low"


class InvitationUnusable(DomainError):
    status = 410
    title = "Invitation no longer valid"


class ServiceUnavailable(RuntimeError):
    """A service the portal calls (the notebook hub: ``compute.hub_client.HubError``) failed or refused; pages
    answer 503. Not a ``DomainError``: nothing the user asked for was wrong, and callers that know only this
    module (``classroom``, which must not import ``compute``) can still tell it apart."""
