"""What the hub shares with the portal, read under the portal's own names.

The hub and the portal hold the same secrets and addresses (the hub's OAuth2 client, the spawn-check token, the
portal's service token for the hub's API, the cluster the hub's servers run on). Both read them under the
portal's setting names (``PORTAL_HUB_...``, docs/settings.md), so one ``.env`` line serves both containers.
The hub's earlier names still work for one release, with a deprecation line in the log.

Only the standard library is used, so the module imports in the hub's environment and in the portal's tests.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

log = logging.getLogger("hub_config")

#: The portal's name of each shared value and the hub's earlier name for it (deprecated; removed next release).
SHARED = {
    "PORTAL_HUB_OAUTH_CLIENT_ID": "HUB_OAUTH_CLIENT_ID",
    "PORTAL_HUB_OAUTH_CLIENT_SECRET": "HUB_OAUTH_CLIENT_SECRET",
    "PORTAL_HUB_OAUTH_REDIRECT_URI": "HUB_OAUTH_CALLBACK_URL",
    "PORTAL_HUB_SPAWN_CHECK_TOKEN": "PORTAL_API_TOKEN",
    "PORTAL_HUB_API_TOKEN": "HUB_PORTAL_SERVICE_TOKEN",
    "PORTAL_HUB_SLURM_CLUSTER": "HUB_SLURM_CLUSTER",
}


def shared(name: str, default: str = "", env: Mapping[str, str] | None = None) -> str:
    """The value of the portal's variable ``name``, else of the hub's earlier name for it (logged), else ``default``."""
    env = os.environ if env is None else env
    value = env.get(name, "")
    if value:
        return value
    old = SHARED[name]
    value = env.get(old, "")
    if value:
        log.warning("%s is deprecated and will be removed in the next release: set %s (the portal's name)", old, name)
        return value
    return default
