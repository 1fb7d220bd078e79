"""A local JupyterHub (hub_config/jupyterhub_config.py) run as a subprocess by ``portal demo`` and the tests.

It needs the ``[hub]`` extra and configurable-http-proxy from npm (``scripts/bootstrap`` installs both).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from portal_standin.devstack import free_port, patience, wait_for_http

#: The checkout this package lives in (its standin/ folder): hub_config/ and node_modules/ are not packaged.
REPO = Path(__file__).resolve().parents[2]
HUB_CONFIG = REPO / "hub_config" / "jupyterhub_config.py"


@dataclass
class HubProcess:
    """JupyterHub with its proxy on 127.0.0.1; its single-user servers run as local processes.

    ``env`` adds to (and overrides) the variables documented in hub_config/jupyterhub_config.py; ``config`` is
    the configuration file (another file may ``load_subconfig`` the usual one and change it, as the notebook
    benchmark does).
    """

    state_dir: Path
    port: int = 0
    portal_url: str = "http://127.0.0.1:5000"
    portal_api_token: str = ""
    service_token: str = ""
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    api_port: int = 0
    proxy_api_port: int = 0
    config: Path = HUB_CONFIG

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/hub/api"

    def start(self, *, timeout: float = 30.0) -> HubProcess:
        executable = shutil.which("jupyterhub", path=str(Path(sys.executable).parent))
        if executable is None:
            raise RuntimeError("JupyterHub is not installed; install the [hub] extra (scripts/bootstrap)")
        node_bin = REPO / "node_modules" / ".bin"
        if not (node_bin / "configurable-http-proxy").exists() and shutil.which("configurable-http-proxy") is None:
            raise RuntimeError("configurable-http-proxy is not installed; run `npm ci` (scripts/bootstrap)")
        self.state_dir = Path(self.state_dir).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.api_port = self.api_port or free_port()
        self.proxy_api_port = self.proxy_api_port or free_port()
        path = os.pathsep.join([str(node_bin), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = {
            **os.environ,
            "PATH": path,
            "PORTAL_URL": self.portal_url,
            "PORTAL_HUB_SPAWN_CHECK_TOKEN": self.portal_api_token,
            "PORTAL_HUB_API_TOKEN": self.service_token,
            "HUB_IP": "127.0.0.1",
            "HUB_PORT": str(self.port),
            "HUB_API_PORT": str(self.api_port),
            "HUB_PROXY_API_PORT": str(self.proxy_api_port),
            "HUB_STATE_DIR": str(self.state_dir),
            **self.env,
        }
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [executable, "-f", str(self.config)],
            cwd=self.state_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: the proxy and services die with it
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        """The proxy answers 404 until the hub has added its route: wait for the hub's own 200 (``timeout`` seconds
        on an idle machine, more on a busy one)."""
        assert self.process is not None
        deadline = time.monotonic() + patience(timeout)
        wait_for_http(f"{self.api_url}/", timeout=timeout, process=self.process)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterHub exited with {self.process.returncode} while starting")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.api_url}/", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{self.api_url}/ did not answer 200 within {patience(timeout):.0f} s")

    def stop(self, *, timeout: float = 15.0) -> None:
        """Stops the hub (which stops its servers and proxy), then kills whatever of them is left."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
            process.wait()
        self._kill_leftover_servers()

    def _kill_leftover_servers(self) -> None:
        """The proxy, services and single-user servers run in their own sessions: find what is left of them
        by the proxy's pid file and by this hub's API URL in their environment, and kill it."""
        try:
            import psutil
        except ImportError:  # pragma: no cover - psutil comes with distributed ([hub] extra)
            return
        victims: list[psutil.Process] = []
        pid_file = self.state_dir / "jupyterhub-proxy.pid"
        with contextlib.suppress(OSError, ValueError, psutil.Error):
            proxy = psutil.Process(int(pid_file.read_text().strip()))
            if "configurable-http-proxy" in " ".join(proxy.cmdline()):
                victims.append(proxy)
        marker = f"127.0.0.1:{self.api_port}/hub/api"
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error):
                if marker in proc.environ().get("JUPYTERHUB_API_URL", ""):
                    victims.append(proc)
        for proc in list(victims):
            with contextlib.suppress(psutil.Error):
                victims.extend(proc.children(recursive=True))
        for proc in victims:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(victims, timeout=5)
