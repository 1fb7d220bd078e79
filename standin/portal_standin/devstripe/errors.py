"""Stripe-shaped API errors, raised as localstripe's ``UserError`` so that its error middleware renders them."""

from __future__ import annotations

from localstripe.errors import UserError


def invalid_request(message: str, param: str | None = None, code: str | None = None, **extra: str) -> UserError:
    """A 400 ``invalid_request_error``; ``stripe`` raises it as ``stripe.InvalidRequestError``."""
    contents: dict[str, str] = dict(extra)
    if param is not None:
        contents["param"] = param
    if code is not None:
        contents["code"] = code
    return UserError(400, message, contents)


def unknown_parameter(param: str) -> UserError:
    return invalid_request(f"Received unknown parameter: {param}", param, "parameter_unknown")


def missing_parameter(param: str) -> UserError:
    return invalid_request(f"Missing required param: {param}.", param, "parameter_missing")


def not_found(message: str, param: str | None = None) -> UserError:
    """A 404 ``invalid_request_error`` with code ``resource_missing``, as Stripe answers for unknown ids."""
    contents = {"code": "resource_missing"}
    if param is not None:
        contents["param"] = param
    return UserError(404, message, contents)
