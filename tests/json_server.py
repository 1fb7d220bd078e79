"""A local HTTP server that answers JSON: the tests' (and benchmarks') stand-ins for the services beside the portal
that speak JSON over HTTP (the portal as the hub's spawner asks it, the hub's REST API, a registry).

A stand-in is a function from the request (``Asked``) to its answer (``Answer``: status, JSON body, content type),
or ``None`` to hang up without answering. ``JsonServer`` serves it on 127.0.0.1 on a free port, one thread per
request, until ``stop`` (or the end of its ``with`` block)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Asked:
    """One request as the stand-in sees it."""

    method: str
    #: The path and query as sent (``/hub/api/users?state=active``).
    target: str
    headers: Message
    #: The body read as JSON; None when there is none.
    json: Any

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query)


@dataclass(frozen=True)
class Answer:
    status: int
    #: Sent as JSON; None: no body.
    body: Any = None
    content_type: str = "application/json"


@dataclass
class JsonServer:
    """Serves ``answer`` on 127.0.0.1 (a free port); ``url`` is its base URL."""

    answer: Callable[[Asked], Answer | None]
    server: ThreadingHTTPServer = field(init=False)

    def __post_init__(self) -> None:
        answer = self.answer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the portal's clients use it

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                given = answer(Asked(self.command, self.path, self.headers, json.loads(raw) if raw else None))
                if given is None:  # hang up: the client sees the connection closed, no answer
                    self.close_connection = True
                    return
                data = b"" if given.body is None else json.dumps(given.body).encode()
                self.send_response(given.status)
                if data:
                    self.send_header("Content-Type", given.content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> JsonServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
