"""localstripe, extended and confined: ``python -m portal_standin.devstripe --port P --data-dir D``.

The PyPI package ``localstripe`` (1.15.10) is a stateful fake of Stripe's API: an aiohttp application
(``localstripe.server.app``) over a dict of objects (``localstripe.resources.store``) that it pickles after
every write. This module runs that same application in this process, with:

* its state file moved from the hard-coded ``/tmp/localstripe.pickle`` to ``<data dir>/localstripe.pickle``
  (written atomically), loaded at start unless ``--from-scratch``;
* the server bound to 127.0.0.1 only (localstripe binds every interface);
* Checkout Sessions (:mod:`.checkout`) and their hosted payment page (:mod:`.hosted_page`), which the auth
  middleware lets through without an API key, like checkout.stripe.com;
* ``Idempotency-Key`` handling (:mod:`.idempotency`) and Stripe's refund rules and events (:mod:`.refunds`);
* ``GET /_devstripe/health`` for launchers to wait on.

localstripe's own endpoints stay as they are, among them ``POST /_config/webhooks/<id>`` (``url``,
``secret``, optional ``events[]``) to register a webhook endpoint and ``DELETE /_config/data`` to reset.
Its application and store are module globals, so :func:`build_app` works once per process.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from aiohttp import web
from localstripe import server as localstripe_server
from localstripe.resources import Store, store

from portal_standin.devstripe import checkout, hosted_page, idempotency, refunds

log = logging.getLogger("portal.devstripe")

STATE_FILE = "localstripe.pickle"
#: Paths served without an API key, besides localstripe's own ``/_config/`` and ``/js.stripe.com/``.
PUBLIC_PREFIXES = ("/pay/", "/_devstripe/")

_built = False


def relocate_store(path: Path) -> None:
    """Make localstripe's store save to and load from ``path`` instead of ``/tmp/localstripe.pickle``."""

    def dump_to_disk(self: Store) -> None:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump(dict(self), f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def try_load_from_disk(self: Store) -> None:
        try:
            with path.open("rb") as f:
                # The stand-in's own file, in a directory it was given: nothing untrusted is unpickled.
                saved = pickle.load(f)  # noqa: S301
        except FileNotFoundError:
            return
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
            log.warning("%s cannot be loaded (%s); starting from scratch", path, exc)
            return
        dict.clear(self)
        dict.update(self, saved)

    Store.dump_to_disk = dump_to_disk
    Store.try_load_from_disk = try_load_from_disk


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def auth_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """localstripe's API-key check, except for the hosted pages, which browsers reach without a key."""
    if request.path.startswith(PUBLIC_PREFIXES):
        return await handler(request)
    return await localstripe_server.auth_middleware(request, handler)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app(data_dir: Path, *, from_scratch: bool = False) -> web.Application:
    """localstripe's application with the extensions, its state kept in ``data_dir``."""
    global _built
    if _built:
        raise RuntimeError("localstripe's application can be built once per process")
    _built = True

    data_dir.mkdir(parents=True, exist_ok=True)
    relocate_store(data_dir / STATE_FILE)
    if not from_scratch:
        store.try_load_from_disk()
    refunds.install()

    app = localstripe_server.app
    middlewares = app.middlewares
    position = list(middlewares).index(localstripe_server.auth_middleware)
    middlewares[position] = auth_middleware
    middlewares.insert(position + 1, idempotency.idempotency_middleware)

    checkout.add_routes(app)
    hosted_page.add_routes(app)
    app.router.add_get("/_devstripe/health", health)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m portal_standin.devstripe",
        description="localstripe with Checkout Sessions, a hosted payment page, idempotency and refund events, "
        "on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 only inside a container)")
    parser.add_argument("--data-dir", type=Path, required=True, help="where its state file is kept")
    parser.add_argument("--from-scratch", action="store_true", help="ignore the state saved in --data-dir")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = build_app(args.data_dir, from_scratch=args.from_scratch)
    log.info("Stripe stand-in on http://%s:%d, state in %s", args.host, args.port, args.data_dir / STATE_FILE)
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        access_log=logging.getLogger("aiohttp.access"),
        print=None,
    )
