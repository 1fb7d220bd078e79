"""The first notebook: at a user's first start, ``first-steps.ipynb`` is put in their home and the server opens
on it, its first cell ready to run with Shift+Enter on the "Python 3 (Dask GPU)" kernel's cluster.

Only once per home (a marker file remembers it): a user who deletes or renames the notebook is not given it
again, and later starts open JupyterLab as usual (``c.Spawner.default_url``). It serves the spawners whose
homes are on the hub's file system (SimpleLocalProcessSpawner's ``home_dir``, the Slurm spawner's
``req_homedir`` on the shared file system), like the course materials. When the hub runs as root, the copy
belongs to the home's owner.

Only the standard library is used, so the module imports in the hub's environment and in the portal's tests.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "notebooks" / "first-steps.ipynb"
#: Left in the home once the notebook was given, so that it is given once.
MARKER = ".portal-first-steps"


def home_of(spawner: Any) -> str:
    """The user's home on the hub's file system: the local spawner's ``home_dir``, batchspawner's
    ``req_homedir``; empty when the spawner has neither."""
    return getattr(spawner, "home_dir", "") or getattr(spawner, "req_homedir", "") or ""


def _owned_like(path: Path, home: Path) -> None:
    if os.geteuid() == 0:
        owner = home.stat()
        os.chown(path, owner.st_uid, owner.st_gid)


def place_first_notebook(spawner: Any) -> Path | None:
    """Copy the first notebook into the home at the first start and open the server on it; the copy, or None."""
    home_text = home_of(spawner)
    if not home_text:
        return None
    home = Path(home_text)
    marker, target = home / MARKER, home / NOTEBOOK.name
    if marker.exists():
        return None
    try:
        home.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            shutil.copyfile(NOTEBOOK, target)
            _owned_like(target, home)
        marker.write_text("first-steps.ipynb was given at the first start; it is not given again\n")
        _owned_like(marker, home)
    except OSError as exc:  # the server starts without it
        log.warning("could not give %s the first notebook: %s", getattr(spawner.user, "name", "?"), exc)
        return None
    spawner.default_url = f"/lab/tree/{NOTEBOOK.name}"
    return target
