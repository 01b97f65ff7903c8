"""What the processors share: the store type and the exposures view that the risk, portfolio and
execution processors read."""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from typing import Any

#: A processor's store: a Faust table in a worker, a dict in process. Keys are ``str`` (token or
#: account), values JSON (dicts, lists, numbers, strings).
Store = MutableMapping[str, Any]


def key_str(key) -> str:
    return key.decode() if isinstance(key, bytes) else key


class ExposureView:
    """The accounts with open positions, read from the ``exposures`` store (written by the
    portfolio processor, read by risk on every tick).

    A worker's ``exposures`` is a global table that other workers write too, so the snapshot is
    re-read at most every ``refresh_s`` seconds (wall clock) and at once after this process
    changed it (:meth:`invalidate`). In process (backtests) every write goes through
    :meth:`invalidate`, so ``refresh_s`` is infinite and the wall clock plays no part.
    """

    def __init__(self, store: Store, refresh_s: float = 0.05):
        self.store = store
        self.refresh_s = refresh_s
        self._at = float("-inf")
        self._items: list[tuple[str, dict]] = []

    def invalidate(self) -> None:
        self._at = float("-inf")

    def set(self, account: str, value: dict) -> None:
        self.store[account] = value
        self.invalidate()

    def items(self) -> list[tuple[str, dict]]:
        """(account, {"cash", "positions"}) of every account with a position."""
        if self._at == float("-inf") or (self.refresh_s != float("inf")
                                         and time.monotonic() - self._at > self.refresh_s):
            self._items = [(key_str(k), v) for k, v in self.store.items() if v and v.get("positions")]
            self._at = time.monotonic()
        return self._items
