"""Course materials: at a student's first start of a course's notebook, the course's git repository is cloned
into their home as ``course-<id>/``; later starts leave it alone (what the student changed stays theirs).

``c.Spawner.pre_spawn_hook = clone_course_materials`` runs after the portal's spawn check
(``apply_user_options``), whose environment carries ``PORTAL_COURSE`` and ``PORTAL_COURSE_MATERIALS``.
It serves spawners with a home on the hub's file system (SimpleLocalProcessSpawner, BatchSpawner on a shared
file system); on Kubernetes an init container (or nbgitpuller) does the same with the same two variables.
A failed clone does not stop the server: it is logged, and the student can clone by hand.

Only the standard library is used, so the module imports in the hub's environment and in the portal's tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from first_notebook import home_of

log = logging.getLogger(__name__)

#: The longest a clone may take before the server starts without it.
CLONE_TIMEOUT_SECONDS = 60.0


async def clone_course_materials(spawner: Any) -> Path | None:
    """Clone the course's materials into the student's home once; returns the folder, or None."""
    environment = spawner.environment or {}
    url, course = environment.get("PORTAL_COURSE_MATERIALS", ""), environment.get("PORTAL_COURSE", "")
    home = home_of(spawner)  # the Slurm spawner's req_homedir too: it has no home_dir
    if not url or not course.isdigit() or not home:
        return None
    target = Path(home) / f"course-{course}"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        "git",
        "clone",
        "--quiet",
        "--depth",
        "1",
        "--",
        url,
        str(target),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
    )
    try:
        _out, err = await asyncio.wait_for(process.communicate(), CLONE_TIMEOUT_SECONDS)
    except TimeoutError:
        process.kill()
        log.warning("cloning %s for course %s timed out; the server starts without it", url, course)
        return None
    if process.returncode != 0:
        log.warning("cloning %s for course %s failed: %s", url, course, err.decode(errors="replace")[-500:])
        return None
    return target
