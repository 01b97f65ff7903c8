"""What the processors share: the store type and the exposures view that the risk, portfolio and
execution processors read."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

#: A processor's store: a Faust table in a worker, a dict in process. Keys are ``str`` (token or
#: account), values JSON (dicts, lists, numbers, strings).
Store = MutableMapping[str, Any]


def key_str(key) -> str:
    return key.decode() if isinstance(key, bytes) else key


_DELETED = object()


class WriteBehind(MutableMapping):
    """A store whose writes wait in memory until they are written to it; reads see them at once.

    Why: a worker's table write reaches its local RocksDB at once, while the events the same step
    sends are still in the producer's buffer. A worker killed between the two comes back with
    state that says "done" (a bar closed, a window decided) and replays the step's input from the
    last committed offset, which the processors then skip as already seen: the step's events are
    lost. A runtime that holds a step's writes here until the broker has acknowledged the step's
    events makes a kill before the writes replay the step as if it had never run: the same events
    again, under the same derived ids, which their consumers already deduplicate. In process
    (backtests) processors write plain dicts directly.

    Two ways to write the held changes: :meth:`flush` writes them now (the caller has waited for
    the acknowledgements); :meth:`hand_over` moves them into a layer of their own, still read, so
    that the next steps can run while the acknowledgements are on their way, and :meth:`apply`
    writes that layer later (layers in the order they were handed over: a newer write to the same
    key must land last). :meth:`drop` forgets a layer unwritten (its partition was revoked)."""

    __slots__ = ("store", "pending", "flying")

    def __init__(self, store: Store):
        self.store = store
        self.pending: dict = {}
        #: the layers handed over and not yet applied or dropped, oldest first
        self.flying: list[dict] = []

    def _held(self, key):
        """The held value of ``key`` (newest first), ``_DELETED``, or ``self`` if none is held.
        One from a layer in flight is a copy: processors change what they read in place (the
        running indicator state), and the layer must be written as it was handed over, or a kill
        between two layers' writes would store one step's key with the next step's changes."""
        value = self.pending.get(key, self)
        if value is self and self.flying:
            for layer in reversed(self.flying):
                value = layer.get(key, self)
                if value is not self:
                    return value if value is _DELETED else copy.deepcopy(value)
        return value

    def __getitem__(self, key):
        value = self._held(key)
        if value is self:
            return self.store[key]
        if value is _DELETED:
            raise KeyError(key)
        return value

    def get(self, key, default=None):
        value = self._held(key)
        if value is self:
            return self.store.get(key, default)
        return default if value is _DELETED else value

    def __contains__(self, key) -> bool:
        value = self._held(key)
        return key in self.store if value is self else value is not _DELETED

    def __setitem__(self, key, value) -> None:
        self.pending[key] = value

    def __delitem__(self, key) -> None:
        if key not in self:
            raise KeyError(key)
        self.pending[key] = _DELETED

    def _overlay(self) -> dict:
        if not self.flying:
            return self.pending
        merged: dict = {}
        for layer in self.flying:
            merged.update(layer)
        merged.update(self.pending)
        return merged

    def __iter__(self) -> Iterator:
        held = self._overlay()
        for key in self.store:
            if key_str(key) not in held and key not in held:
                yield key
        for key, value in held.items():
            if value is not _DELETED:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def items(self):
        held = self._overlay()
        out = [(k, v) for k, v in self.store.items() if key_str(k) not in held and k not in held]
        flying = self.pending is not held  # the merged layers: copies, as in _held
        out += [(k, copy.deepcopy(v) if flying and k not in self.pending else v) for k, v in held.items()
                if v is not _DELETED]
        return out

    def _write(self, changes: dict) -> None:
        for key, value in changes.items():
            if value is _DELETED:
                self.store.pop(key, None)
            else:
                self.store[key] = value

    def flush(self) -> None:
        """Write the held changes to the underlying store (in a worker: the table, within the
        event being handled, so they land in its partition). Only with no layer in flight: it
        would land before them."""
        if self.pending:
            pending, self.pending = self.pending, {}
            self._write(pending)

    def hand_over(self) -> dict:
        """Move the held changes into a new layer, still read until :meth:`apply` or :meth:`drop`;
        returns it (empty, and not kept, when nothing is held)."""
        layer, self.pending = self.pending, {}
        if layer:
            self.flying.append(layer)
        return layer

    def _forget(self, layer: dict) -> None:
        flying = self.flying
        if flying and flying[0] is layer:
            del flying[0]
            return
        for i, kept in enumerate(flying):
            if kept is layer:  # by identity: two layers may hold equal changes
                del flying[i]
                return

    def apply(self, layer: dict) -> None:
        """Write a layer from :meth:`hand_over` to the store (in a worker: within its step's event)
        and stop holding it. Raises what the store raises; the layer is forgotten either way."""
        try:
            self._write(layer)
        finally:
            self._forget(layer)

    def drop(self, layer: dict) -> None:
        """Forget a layer from :meth:`hand_over` without writing it."""
        self._forget(layer)


class StoreSnapshot(Mapping):
    """A read-only copy of a small store (key -> value, keys as ``str``), taken at the first read
    after :meth:`invalidate`, for a processor that reads it far more often than anyone writes it:
    in a worker, a global table (``halt``, ``correlations``) whose every read goes to RocksDB,
    and which ``app.main.RawKeyGlobalTable`` reports each change of, this worker's or
    another's. Writers keep writing the store itself."""

    __slots__ = ("store", "_data")

    def __init__(self, store: Mapping):
        self.store = store
        self._data: dict | None = None

    def invalidate(self) -> None:
        self._data = None

    def _snapshot(self) -> dict:
        data = self._data
        if data is None:
            data = self._data = {key_str(k): v for k, v in self.store.items()}
        return data

    def __getitem__(self, key):
        return self._snapshot()[key]

    def get(self, key, default=None):
        return self._snapshot().get(key, default)

    def __iter__(self) -> Iterator:
        return iter(self._snapshot())

    def __len__(self) -> int:
        return len(self._snapshot())

    def items(self):
        return self._snapshot().items()


class ExposureView:
    """The accounts with open positions, read from the ``exposures`` store (written by the
    portfolio processor, read by risk on every tick), re-read only after :meth:`invalidate`.

    The portfolio's writes go through :meth:`set`, which invalidates. In a worker ``exposures``
    is a global table that other workers write too, and the table reports each change
    (``app.main.RawKeyGlobalTable``), theirs included, to :meth:`invalidate`.
    """

    def __init__(self, store: Store):
        self.store = store
        self._items: list[tuple[str, dict]] | None = None

    def invalidate(self) -> None:
        self._items = None

    def set(self, account: str, value: dict) -> None:
        self.store[account] = value
        self.invalidate()

    def items(self) -> list[tuple[str, dict]]:
        """(account, {"cash", "positions"}) of every account with a position."""
        items = self._items
        if items is None:
            items = self._items = [(key_str(k), v) for k, v in self.store.items() if v and v.get("positions")]
        return items
