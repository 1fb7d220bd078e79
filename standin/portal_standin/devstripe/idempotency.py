"""Stripe's idempotent requests (https://docs.stripe.com/api/idempotent_requests), which localstripe lacks.

For every ``POST /v1/...`` carrying an ``Idempotency-Key`` header (the ``stripe`` library sends one with
every POST, random unless the caller gives ``idempotency_key``):

* the first request runs; when it succeeds, its status and body are kept for 24 hours under the key;
* a later request with the same key, endpoint and parameters gets the same answer replayed without running
  again, with the header ``Idempotent-Replayed: true``;
* the same key with other parameters or another endpoint is refused with a 400 ``idempotency_error``
  (``stripe.IdempotencyError``), and while the first request still runs a second one gets a 409
  ``idempotency_error``, as Stripe answers;
* a failed request (an error answer) is not kept, so it can be retried with the same key. Stripe keeps
  the answers of requests that failed after they started executing; the stand-in keeps none.

Records live in localstripe's store (``idempotency_key:<key>``), so they are saved and reset with it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from localstripe.resources import store
from localstripe.server import get_post_data, json_response

#: How long Stripe keeps an idempotent answer.
RETENTION_S = 24 * 3600
MAX_KEY_LENGTH = 255
_PREFIX = "idempotency_key:"

_in_flight: set[str] = set()


@dataclass
class IdempotentResult:
    endpoint: str
    parameters: str
    status: int
    body: bytes
    content_type: str
    saved_at: float


def _error(status: int, message: str) -> web.Response:
    return json_response({"error": {"type": "idempotency_error", "message": message}}, status=status)


def _forget_old_results(now: float) -> None:
    for key in [key for key, value in store.items() if key.startswith(_PREFIX) and now - value.saved_at > RETENTION_S]:
        dict.__delitem__(store, key)  # saved with the next write


@web.middleware
async def idempotency_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    key = request.headers.get("Idempotency-Key")
    if request.method != "POST" or not key or not request.path.startswith("/v1/"):
        return await handler(request)
    if len(key) > MAX_KEY_LENGTH:
        return json_response(
            {
                "error": {
                    "type": "invalid_request_error",
                    "message": f"Idempotency-Key must be at most {MAX_KEY_LENGTH} characters long.",
                }
            },
            status=400,
        )

    endpoint = f"POST {request.path}"
    data: Any = await get_post_data(request, remove_auth=False) or {}
    parameters = json.dumps(data, sort_keys=True)
    now = time.time()
    record: IdempotentResult | None = store.get(_PREFIX + key)
    if record is not None and now - record.saved_at > RETENTION_S:
        record = None
    if record is not None:
        if record.endpoint != endpoint:
            return _error(
                400,
                f"Keys for idempotent requests can only be used for the same endpoint they were first used for "
                f"('{record.endpoint}' vs '{endpoint}'). Try using a key other than '{key}' if you meant to "
                "execute a different request.",
            )
        if record.parameters != parameters:
            return _error(
                400,
                "Keys for idempotent requests can only be used with the same parameters they were first used "
                f"with. Try using a key other than '{key}' if you meant to execute a different request.",
            )
        replay = web.Response(body=record.body, status=record.status, content_type=record.content_type)
        replay.headers["Idempotent-Replayed"] = "true"
        replay.headers["Idempotency-Key"] = key
        return replay
    if key in _in_flight:
        return _error(
            409,
            "There is currently another in-progress request using this Idempotent Key (that probably means you "
            "submitted twice, and the other request is still going through): "
            f"{key}. Please try again later.",
        )

    _in_flight.add(key)
    try:
        response = await handler(request)
    finally:
        _in_flight.discard(key)
    if 200 <= response.status < 300 and isinstance(response, web.Response) and response.body is not None:
        _forget_old_results(now)
        body = response.body if isinstance(response.body, bytes) else bytes(response.body)
        store[_PREFIX + key] = IdempotentResult(endpoint, parameters, response.status, body, response.content_type, now)
    response.headers["Idempotency-Key"] = key
    return response
