"""Local stand-ins for the real services, run as subprocesses by ``portal demo`` and by the tests."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: The most a start-up deadline grows on a busy machine: 10 times its time on an idle one.
MOST_PATIENCE = 10.0


def patience(seconds: float) -> float:
    """``seconds`` on an idle machine, more on a busy one: times the load average per CPU, at most
    ``MOST_PATIENCE`` times. Every start-up deadline of the stand-ins and the tests goes through here, so that a
    machine running other work (a load average of 25 on 2 cores) slows them down instead of failing them."""
    try:
        load = os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:  # pragma: no cover - no load average on this platform
        load = 1.0
    return seconds * min(MOST_PATIENCE, max(1.0, load))


def wait_for_http(url: str, *, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url`` answers below 500: ``timeout`` seconds on an idle machine, more on a busy one."""
    timeout = patience(timeout)
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode} before {url} answered")
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException as exc:
            last_error = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s ({last_error})")


@dataclass
class OIDCProviderProcess:
    """A local OpenID Connect provider (the ``oidc-provider-mock`` package, run by
    ``portal_standin.oidc_provider``) on 127.0.0.1.

    It issues RS256 ID tokens for the users given here, logging in whoever's ``sub`` is posted to its
    authorize URL; its login page lists them by name, with what each is (``who``). Its issuer is built from
    the Host header, so always reach it as 127.0.0.1.
    """

    port: int
    users: list[dict[str, Any]] = field(default_factory=list)
    #: What each predefined user is (subject -> "PI of ..."), shown next to their name on the login page.
    who: dict[str, str] = field(default_factory=dict)
    #: Lifetime of its ID and access tokens, in seconds.
    token_max_age: int | None = None
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def discovery_url(self) -> str:
        return f"{self.url}/.well-known/openid-configuration"

    def start(self) -> OIDCProviderProcess:
        if importlib.util.find_spec("oidc_provider_mock") is None:
            raise RuntimeError("oidc-provider-mock is not installed; run the README's set-up command")
        args = [
            sys.executable,
            "-m",
            "portal_standin.oidc_provider",
            "--port",
            str(self.port),
            "--require-nonce",
            "true",
        ]
        if self.token_max_age is not None:
            args += ["--token-max-age", str(self.token_max_age)]
        for user in self.users:
            args += ["--user-claims", json.dumps(user)]
        args += ["--who", json.dumps(self.who)]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        wait_for_http(self.discovery_url, process=self.process)
        return self

    def add_user(self, sub: str, **claims: Any) -> None:
        response = requests.put(f"{self.url}/users/{sub}", json=claims, timeout=5)
        response.raise_for_status()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
