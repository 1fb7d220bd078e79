"""A small client of the JupyterHub REST API, as the portal's service ``portal`` (``settings.hub_api_token``).

Every call sends ``Authorization: token <hub_api_token>`` to ``{settings.hub_url}/hub/api``. Failures are
``HubError`` subclasses: ``HubUnavailable`` (unreachable, timeouts, 5xx, a rejected service token) and
``HubRefused`` (a 4xx answer; a refused spawn carries the portal's message from the spawn check).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import quote

import requests

from portal.config import Settings
from portal.errors import ServiceUnavailable

#: JupyterHub's paginated answers (``items`` and ``_pagination``) are asked for with this media type.
PAGINATION = "application/jupyterhub-pagination+json"
#: Users asked for per page of the hub's user list. The hub answers at most its ``api_page_max_limit`` (200
#: unless configured; hub_config/jupyterhub_config.py raises it to this) and says in ``_pagination`` where the
#: next page starts, so a hub with a lower limit is read in full, in more pages.
LIST_PAGE = 1000


class HubError(ServiceUnavailable):
    """The hub did not do what was asked."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class HubUnavailable(HubError):
    """The hub could not be reached, timed out, failed (5xx) or did not accept the portal's token."""


class HubRefused(HubError):
    """The hub refused the request (4xx); for a spawn, ``message`` is the portal's spawn-check detail."""


class ServerStatus(StrEnum):
    READY = "ready"
    #: Starting or stopping.
    PENDING = "pending"
    STOPPED = "stopped"


@dataclass(frozen=True)
class HubServer:
    """One server of a user at the hub."""

    user: str
    name: str
    ready: bool
    pending: str | None
    started: datetime | None
    url: str

    @property
    def status(self) -> ServerStatus:
        if self.ready:
            return ServerStatus.READY
        return ServerStatus.PENDING if self.pending else ServerStatus.STOPPED


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _server(user: str, name: str, model: dict[str, Any]) -> HubServer:
    return HubServer(
        user=user,
        name=name,
        ready=bool(model.get("ready")),
        pending=model.get("pending") or None,
        started=_parse_time(model.get("started")),
        url=str(model.get("url") or ""),
    )


class HubClient:
    def __init__(
        self, base_url: str, api_token: str, *, timeout: float = 30.0, session: requests.Session | None = None
    ) -> None:
        self.api_url = base_url.rstrip("/") + "/hub/api"
        self.api_token = api_token
        self.timeout = timeout
        self.http = session or requests.Session()

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> HubClient:
        return cls(settings.hub_url, settings.hub_api_token, **kwargs)

    # --- plumbing ------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, ok: tuple[int, ...], **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"token {self.api_token}", **kwargs.pop("headers", {})}
        url = self.api_url + path
        try:
            response = self.http.request(method, url, headers=headers, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise HubUnavailable(f"the hub at {self.api_url} could not be reached: {exc}") from exc
        if response.status_code in ok:
            return response
        message = _message(response)
        if response.status_code >= 500 or (response.status_code == 403 and "requires any of" in message):
            raise HubUnavailable(f"{method} {path}: {response.status_code} {message}", status=response.status_code)
        if response.status_code == 401:
            raise HubUnavailable(f"{method} {path}: the hub refused the portal's token", status=401)
        raise HubRefused(message, status=response.status_code)

    @staticmethod
    def _path(name: str, server: str | None = None) -> str:
        path = f"/users/{quote(name, safe='')}"
        return path if server is None else f"{path}/servers/{quote(server, safe='')}"

    # --- users and servers -----------------------------------------------------------------------------

    def get_user(self, name: str) -> dict[str, Any] | None:
        response = self._request("GET", self._path(name), ok=(200, 404))
        return None if response.status_code == 404 else response.json()

    def ensure_user(self, name: str) -> dict[str, Any]:
        """The hub user ``name``, created when missing."""
        user = self.get_user(name)
        if user is not None:
            return user
        response = self._request("POST", self._path(name), ok=(201, 409))
        if response.status_code == 409:  # created meanwhile by someone else
            user = self.get_user(name)
            if user is None:
                raise HubError(f"the hub user {name!r} could neither be created nor found")
            return user
        return response.json()

    def start_server(self, name: str, server: str, user_options: dict[str, Any]) -> ServerStatus:
        """Starts the named server; READY (201) or PENDING (202, still spawning). A refused spawn check is a
        ``HubRefused`` whose ``message`` is the portal's."""
        response = self._request("POST", self._path(name, server), ok=(201, 202), json=user_options)
        return ServerStatus.READY if response.status_code == 201 else ServerStatus.PENDING

    def server(self, name: str, server: str) -> HubServer | None:
        user = self.get_user(name)
        model = ((user or {}).get("servers") or {}).get(server)
        return _server(name, server, model) if model else None

    def server_status(self, name: str, server: str) -> ServerStatus:
        found = self.server(name, server)
        return found.status if found else ServerStatus.STOPPED

    def stop_server(self, name: str, server: str, *, remove: bool = True) -> ServerStatus:
        """Stops the named server (and, with ``remove``, forgets it, so that it does not count against the
        hub's named-server limit); STOPPED (204) or PENDING (202, still stopping). Stopping a server the hub
        does not know is not an error."""
        body = {"remove": True} if remove else None
        response = self._request("DELETE", self._path(name, server), ok=(202, 204, 404), json=body)
        return ServerStatus.PENDING if response.status_code == 202 else ServerStatus.STOPPED

    def active_servers(self) -> list[HubServer]:
        """Every server that is running or starting/stopping, of every user (``GET /users?state=active``)."""
        servers: list[HubServer] = []
        offset = 0
        while True:
            response = self._request(
                "GET",
                "/users",
                ok=(200,),
                params={"state": "active", "offset": offset, "limit": LIST_PAGE},
                headers={"Accept": PAGINATION},
            )
            body = response.json()
            items = body["items"] if isinstance(body, dict) else body
            for user in items:
                for name, model in (user.get("servers") or {}).items():
                    servers.append(_server(user["name"], name, model))
            following = body.get("_pagination", {}).get("next") if isinstance(body, dict) else None
            if not following or not items:
                return servers
            offset = int(following["offset"])


def _message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return response.text[:500] or response.reason
