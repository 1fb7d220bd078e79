"""What runs the moment an allocation becomes exhausted: its Slurm accounts are held, its notebooks stopped.

The hooks belong to an application. ``create_app`` builds them from its settings (``portal.enforcement_hooks``)
and installs them on the app (``app.extensions[EXTENSION]``); after a commit that exhausted an allocation the
ledger runs those of ``current_app`` when there is an app context (requests, CLI commands, the worker run by
``portal worker``). Code that runs without an app context (a worker thread beside the web server, a script,
a test's session) uses the hooks installed for the process with ``install_enforcement_hooks(hooks)``;
``create_app`` installs a copy of its own there too, so a process that built an app keeps enforcing as
before. A process that never did either has no hooks: each allocation it exhausts is then logged as an
ERROR on ``portal.ledger`` (enforcement falls to the next metering round), never skipped silently.

The ledger imports none of the packages whose hooks these are (compute, metering): they are passed in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Flask, current_app, has_app_context

from portal.ledger.models import Allocation

log = logging.getLogger("portal.ledger")

#: Called after a commit that left an allocation exhausted (notebooks stop sessions, Slurm holds accounts).
EnforcementHook = Callable[[Allocation], None]
#: Where an application keeps its hooks, in ``app.extensions``.
EXTENSION = "portal.enforcement_hooks"


class EnforcementHooks(dict[str, EnforcementHook]):
    """The hooks in force, by name. A failing hook is logged and stops none of the others."""

    def register(self, name: str, hook: EnforcementHook | None) -> None:
        """Install (or, with None, remove) the hook called ``name``; installing again replaces it."""
        if hook is None:
            self.pop(name, None)
        else:
            self[name] = hook

    def run(self, allocation: Allocation) -> None:
        for name, hook in list(self.items()):
            try:
                hook(allocation)
            except Exception:
                log.exception("enforcement hook %r failed for allocation %s", name, allocation.id)


#: The hooks of code running without an app context; None until ``install_enforcement_hooks`` sets them.
_process_hooks: EnforcementHooks | None = None


def install_enforcement_hooks(hooks: EnforcementHooks, app: Flask | None = None) -> None:
    """Put ``hooks`` in force for ``app`` (a Flask app; in its ``extensions``) or, without one, for the code of
    this process that runs outside any app context."""
    global _process_hooks
    if app is not None:
        app.extensions[EXTENSION] = hooks
    else:
        _process_hooks = hooks


def enforcement_hooks_in_force() -> EnforcementHooks | None:
    """The current app's hooks inside an app context (when it has any), else the process's; None if neither."""
    if has_app_context():
        hooks = current_app.extensions.get(EXTENSION)
        if hooks is not None:
            return hooks
    return _process_hooks


def register_enforcement_hook(name: str, hook: EnforcementHook | None) -> None:
    """Install (or, with None, remove) one hook in the hooks in force (see ``enforcement_hooks_in_force``);
    outside an app context, in the process's, which it creates when there are none yet."""
    hooks = enforcement_hooks_in_force()
    if hooks is None:
        hooks = EnforcementHooks()
        install_enforcement_hooks(hooks)
    hooks.register(name, hook)


def enforce_exhaustion(allocation: Allocation) -> None:
    """Run the hooks in force for an allocation that a committed movement has just exhausted."""
    hooks = enforcement_hooks_in_force()
    if hooks is None:
        log.error(
            "allocation %s is exhausted but no enforcement hooks are installed in this process (no app context "
            "and install_enforcement_hooks was never called): its Slurm accounts are not held and its notebooks "
            "not stopped until the next metering round",
            allocation.id,
        )
        return
    hooks.run(allocation)
