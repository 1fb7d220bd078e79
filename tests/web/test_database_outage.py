"""The database down or hung: pages and the API answer 503 with ``Retry-After`` and a plain message, quickly, with
one log line and no traceback, and recover by themselves. The outages are real: a TCP proxy in front of the
local PostgreSQL that the test stops or pauses, and a lock another connection holds."""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from portal_standin.devstack import free_port
from sqlmodel import Session

from portal import create_app
from portal.identity.services import create_api_token
from portal.migrations import upgrade

pytestmark = pytest.mark.postgres

CONNECT_TIMEOUT = 2
STATEMENT_TIMEOUT = 1


class TcpProxy:
    """Forwards 127.0.0.1:<port> to PostgreSQL. ``stop`` closes the port and every connection (the database is
    down); ``pause`` keeps accepting but forwards nothing, as a hung server would; ``resume`` and ``start`` undo."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.running = threading.Event()
        self.paused = threading.Event()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()

    def start(self) -> TcpProxy:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        self.running.set()
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while self.running.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self.lock:
            self.sockets.append(client)
        while self.paused.is_set() and self.running.is_set():
            time.sleep(0.05)  # a hung server: the connection is accepted, nothing answers
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        with self.lock:
            self.sockets.append(server)
        pair = {client: server, server: client}
        try:
            while self.running.is_set():
                if self.paused.is_set():
                    time.sleep(0.05)
                    continue
                readable, _, _ = select.select(list(pair), [], [], 0.1)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    pair[source].sendall(data)
        except OSError:
            return
        finally:
            client.close()
            server.close()

    def stop(self) -> None:
        self.running.clear()
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self.sockets.clear()

    def pause(self) -> None:
        self.paused.set()

    def resume(self) -> None:
        self.paused.clear()


@pytest.fixture(scope="module")
def migrated_postgres(postgres_url: str) -> str:
    upgrade(postgres_url)
    return postgres_url


@pytest.fixture
def proxy(migrated_postgres: str) -> Iterator[TcpProxy]:
    url = sa.engine.make_url(migrated_postgres)
    running = TcpProxy((url.host or "127.0.0.1", url.port or 5432)).start()
    yield running
    running.stop()


def through(proxy: TcpProxy, url: str) -> str:
    return sa.engine.make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


@pytest.fixture
def pg_app(make_settings, migrated_postgres: str, proxy: TcpProxy) -> Iterator[Flask]:
    app = create_app(
        make_settings(
            database_url=through(proxy, migrated_postgres),
            database_connect_timeout_seconds=CONNECT_TIMEOUT,
            database_statement_timeout_seconds=STATEMENT_TIMEOUT,
        )
    )
    yield app
    app.extensions["portal.engine"].dispose()


def api_token(app: Flask, user_id: int) -> str:
    from portal.identity.models import User

    with Session(app.extensions["portal.engine"]) as db:
        _row, plain = create_api_token(db, db.get(User, user_id), name="script", scopes=["read"], ttl_days=1)
    return plain


def assert_unavailable(response, *, api: bool) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)[:500]
    assert response.headers["Retry-After"] == "30"
    if api:
        assert response.mimetype == "application/problem+json"
        assert response.json["title"] == "Service temporarily unavailable"
        assert "cannot reach its database" in response.json["detail"]
    else:
        page = response.get_data(as_text=True)
        assert "<h1>Service temporarily unavailable</h1>" in page and "cannot reach its database" in page
        assert "Traceback" not in page


def timed(client: FlaskClient, path: str, **kwargs):
    started = time.monotonic()
    response = client.get(path, **kwargs)
    return response, time.monotonic() - started


def test_with_the_database_down_pages_and_the_api_answer_503_and_recover(
    pg_app: Flask, proxy: TcpProxy, login, caplog: pytest.LogCaptureFixture
) -> None:
    browser = pg_app.test_client()
    user = login(browser)
    token = api_token(pg_app, user.id)
    assert browser.get("/account").status_code == 200

    proxy.stop()
    caplog.clear()
    page, page_seconds = timed(browser, "/account")
    api, api_seconds = timed(pg_app.test_client(), "/api/v1/me", headers={"Authorization": f"Bearer {token}"})

    assert_unavailable(page, api=False)
    assert_unavailable(api, api=True)
    assert page_seconds < CONNECT_TIMEOUT + 3 and api_seconds < CONNECT_TIMEOUT + 3
    health = pg_app.test_client().get("/healthz")
    assert health.status_code == 503 and health.json == {"status": "degraded"}
    warnings = [r for r in caplog.records if r.name == "portal.web"]
    assert len(warnings) == 2 and all(r.levelno == logging.WARNING and r.exc_info is None for r in warnings)
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"

    proxy.start()  # the database is back: the same browser is still logged in
    assert browser.get("/account").status_code == 200
    assert pg_app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_a_hung_database_answers_503_after_the_connect_timeout(
    make_settings, migrated_postgres: str, proxy: TcpProxy, login
) -> None:
    direct = create_app(make_settings(database_url=migrated_postgres))
    browser = direct.test_client()
    user = login(browser)
    token = api_token(direct, user.id)
    proxy.pause()  # from now on the database accepts connections and never answers
    hung = create_app(
        make_settings(database_url=through(proxy, migrated_postgres), database_connect_timeout_seconds=CONNECT_TIMEOUT)
    )
    stranded = hung.test_client()
    stranded.set_cookie("portal_session", browser.get_cookie("portal_session").value)
    try:
        page, page_seconds = timed(stranded, "/account")
        api, api_seconds = timed(hung.test_client(), "/api/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert_unavailable(page, api=False)
        assert_unavailable(api, api=True)
        assert CONNECT_TIMEOUT - 0.5 <= page_seconds < CONNECT_TIMEOUT + 3
        assert api_seconds < CONNECT_TIMEOUT + 3
    finally:
        proxy.resume()
        hung.extensions["portal.engine"].dispose()
        direct.extensions["portal.engine"].dispose()


def test_a_statement_held_up_by_the_database_is_cancelled_and_answers_503(
    pg_app: Flask, migrated_postgres: str, login
) -> None:
    browser = pg_app.test_client()
    user = login(browser)
    token = api_token(pg_app, user.id)
    blocker = sa.create_engine(migrated_postgres)
    with blocker.connect() as connection:
        transaction = connection.begin()
        connection.execute(sa.text("LOCK TABLE web_sessions, api_tokens IN ACCESS EXCLUSIVE MODE"))
        try:
            page, page_seconds = timed(browser, "/account")
            api, api_seconds = timed(pg_app.test_client(), "/api/v1/me", headers={"Authorization": f"Bearer {token}"})
        finally:
            transaction.rollback()
    blocker.dispose()
    assert_unavailable(page, api=False)
    assert_unavailable(api, api=True)
    assert STATEMENT_TIMEOUT - 0.2 <= page_seconds < STATEMENT_TIMEOUT + 3
    assert api_seconds < STATEMENT_TIMEOUT + 3
    assert browser.get("/account").status_code == 200  # the lock is gone: served again


def test_the_engine_carries_the_timeouts_to_postgresql(pg_app: Flask) -> None:
    with pg_app.extensions["portal.engine"].connect() as connection:
        assert connection.execute(sa.text("SHOW statement_timeout")).scalar() == f"{STATEMENT_TIMEOUT}s"
        with pytest.raises(sa.exc.OperationalError, match="canceling statement due to statement timeout"):
            connection.execute(sa.text("SELECT pg_sleep(5)"))
