"""Domain errors every package raises; the web and API layers map them to a response in one place."""

from __future__ import annotations


class DomainError(Exception):
    """An error a caller is expected to handle; ``status`` is the HTTP status it maps to."""

    status = 400
    title = "Request refused"

    def __init__(self, detail: str, *, errors: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        #: Field name -> message, for forms and problem details.
        self.errors = errors or {}

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
