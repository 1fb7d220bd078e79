"""Local stand-ins for the real services, run as subprocesses by ``portal demo`` and by the tests."""

from __future__ import annotations

import json
import os
import shutil
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


def wait_for_http(url: str, *, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
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
    raise TimeoutError(f"{url} did not answer within {timeout} s ({last_error})")


@dataclass
class OIDCProviderProcess:
    """A local OpenID Connect provider (the ``oidc-provider-mock`` package) on 127.0.0.1.

    It issues RS256 ID tokens for the users given here, logging in whoever's ``sub`` is posted to its
    authorize URL. Its issuer is built from the Host header, so always reach it as 127.0.0.1.
    """

    port: int
    users: list[dict[str, Any]] = field(default_factory=list)
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
        executable = shutil.which("oidc-provider-mock", path=str(Path(sys.executable).parent)) or shutil.which(
            "oidc-provider-mock"
        )
        if executable is None:
            raise RuntimeError("oidc-provider-mock is not installed; run the README's set-up command")
        args = [executable, "--host", "127.0.0.1", "--port", str(self.port), "--require-nonce", "true"]
        if self.token_max_age is not None:
            args += ["--token-max-age", str(self.token_max_age)]
        for user in self.users:
            args += ["--user-claims", json.dumps(user)]
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
