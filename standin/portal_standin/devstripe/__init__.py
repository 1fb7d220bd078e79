"""A local stand-in for Stripe, for ``portal demo`` and the tests: localstripe extended with Checkout.

The portal talks to it with the real ``stripe`` library, pointed at :attr:`StripeStandIn.url`
(``stripe.StripeClient(key, base_addresses={"api": url})`` or ``stripe.api_base = url``) with any secret
key of the form ``sk_test_…``. What the server reproduces of Stripe, and what not, is told in
:mod:`portal_standin.devstripe.server` and the modules it names.

This module only launches it, as a subprocess, and imports neither localstripe nor aiohttp.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import requests

from portal_standin.devstack import wait_for_http

__all__ = ["StripeStandIn"]


@dataclass
class StripeStandIn:
    """``python -m portal_standin.devstripe`` on 127.0.0.1:``port``, its state kept in ``data_dir``.

    ``StripeStandIn(port, data_dir).start()`` returns once it answers; ``stop()`` ends it. Its log goes to
    ``log_path`` (by default ``data_dir/devstripe.log``).
    """

    port: int
    data_dir: Path
    log_path: Path | None = None
    #: Forget the state saved in ``data_dir`` by an earlier run.
    from_scratch: bool = False
    process: subprocess.Popen[bytes] | None = None

    #: A secret key it accepts (it accepts any ``sk_…``).
    api_key = "sk_test_devstripe"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> StripeStandIn:
        data_dir = Path(self.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "portal_standin.devstripe", "--port", str(self.port), "--data-dir", str(data_dir)]
        if self.from_scratch:
            args.append("--from-scratch")
        # Importable whether or not the stand-ins are installed: the directory holding ``portal_standin``.
        source_root = str(Path(__file__).resolve().parents[2])
        python_path = os.pathsep.join(filter(None, [source_root, os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": python_path, "PYTHONWARNINGS": "ignore"}
        log = open(self.log_path or data_dir / "devstripe.log", "ab")  # noqa: SIM115
        try:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        finally:
            log.close()
        try:
            wait_for_http(f"{self.url}/_devstripe/health", timeout=timeout, process=self.process)
        except BaseException:
            self.stop()
            raise
        return self

    def configure_webhook(
        self, url: str, secret: str, events: list[str] | None = None, webhook_id: str = "portal"
    ) -> None:
        """Deliver events (all, or those of the types in ``events``) to ``url``, signed with ``secret``.

        Registering the same ``webhook_id`` again replaces it. Webhooks are not saved across restarts.
        """
        data: dict[str, str | list[str]] = {"url": url, "secret": secret}
        if events is not None:
            data["events[]"] = list(events)
        response = requests.post(f"{self.url}/_config/webhooks/{webhook_id}", data=data, timeout=5)
        response.raise_for_status()

    def reset(self) -> None:
        """Forget every object (customers, payments, sessions, events…); webhooks stay."""
        requests.delete(f"{self.url}/_config/data", timeout=5).raise_for_status()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> StripeStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
