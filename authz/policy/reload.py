"""Hot reload of the policy directory.

The watcher polls the files' names, sizes and modification times. On a
change it loads and validates the whole directory in a worker thread, off
the request path, and then swaps the bundle in with one reference
assignment: a check reads the bundle once, so it sees all of the old set or
all of the new, never half of each. An invalid set changes nothing: the last
good set stays in force, and the error is logged with its file and line.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from authz.errors import PolicyLoadError
from authz.policy import load as policy_load
from authz.policy.load import PolicyBundle, signature

log = logging.getLogger(__name__)


class ReloadObserver(Protocol):
    """What a reload reports (metrics): `result` is success or failure."""

    def reloaded(self, result: str, old_version: str, new_version: str) -> None: ...


class PolicyWatcher:
    def __init__(
        self,
        directory: Path,
        interval: float,
        current: Callable[[], PolicyBundle],
        install: Callable[[PolicyBundle], Awaitable[None] | None],
        observer: ReloadObserver | None,
    ) -> None:
        self._directory = directory
        self._interval = interval
        self._current = current
        self._install = install
        self._observer = observer
        # What the bundle in force was loaded from, not the directory now: a change
        # made between that load and this watcher's start is still picked up.
        self._seen = current().signature or signature(directory)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.poll()

    async def poll(self) -> bool:
        """Reload if anything changed; True when a new set went into force."""
        try:
            now = signature(self._directory)
        except OSError as err:
            log.error(
                "policy reload: cannot read `%s`: %s; keeping version %s",
                self._directory,
                err,
                self._current().version,
                extra={"event": "policy.reload_unreadable"},
            )
            return False
        if now == self._seen:
            return False
        self._seen = now  # set before loading: a change made while loading shows up next poll
        try:
            bundle = await asyncio.to_thread(policy_load.load, self._directory)
        except PolicyLoadError as err:
            version = self._current().version
            log.error(
                "policy reload refused, keeping version %s: %s",
                version,
                err,
                extra={"event": "policy.reload_refused"},
            )
            self._report("failure", version, version)
            return False
        old = self._current()
        if bundle.version == old.version:
            return False
        installed = self._install(bundle)
        if inspect.isawaitable(installed):
            await installed
        self._report("success", old.version, bundle.version)
        log.info(
            "policy reload: version %s -> %s (%d policies)",
            old.version,
            bundle.version,
            len(bundle.policies),
            extra={"event": "policy.reloaded"},
        )
        return True

    def _report(self, result: str, old_version: str, new_version: str) -> None:
        if self._observer:
            self._observer.reloaded(result, old_version, new_version)
