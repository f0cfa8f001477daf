"""Every ``param.set`` of this worker process, through QCoDeS' global on-set callback.

QCoDeS calls ``ParameterBase.global_on_set_callback(parameter, value)`` after each set (and each step of a ramp)
of every parameter without an ``on_set_callback`` of its own. :data:`SET_HOOK` installs itself there once
(calling any callback installed before it too) and hands each set, numbered in the order they happened, to its
listeners: the adapter's ring buffer of recent changes and one :class:`Subscription` per running monitor, which
the monitor drains at each poll. A set that is undone before the next poll is thus still reported; polling is
still needed for measured values, which change without a set. A subscription holds at most
:data:`Subscription.LIMIT` sets between two drains and counts what it had to drop beyond that.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..readings import normalize_value
from .qcodes_params import info_of


@dataclass(frozen=True, slots=True)
class SetEvent:
    seq: int
    ts: float
    instrument: str
    parameter: str
    full_name: str
    value: Any
    unit: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "instrument": self.instrument,
            "parameter": self.parameter,
            "full_name": self.full_name,
            "value": self.value,
            "unit": self.unit,
        }


class Subscription:
    """The sets seen since the last :meth:`drain`, oldest first."""

    LIMIT = 10_000

    def __init__(self) -> None:
        self._events: deque[SetEvent] = deque()
        self._dropped = 0
        self._lock = threading.Lock()

    def push(self, event: SetEvent) -> None:
        with self._lock:
            if len(self._events) >= self.LIMIT:
                self._events.popleft()
                self._dropped += 1
            self._events.append(event)

    def drain(self) -> tuple[list[SetEvent], int]:
        """(the sets since the last drain, how many older ones were dropped for lack of room)."""
        with self._lock:
            events, dropped = list(self._events), self._dropped
            self._events.clear()
            self._dropped = 0
        return events, dropped


class SetHook:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._subscriptions: list[Subscription] = []
        self._listeners: list[Callable[[SetEvent], None]] = []
        self._installed = False

    def install(self) -> None:
        """Take QCoDeS' global on-set callback (once per process), keeping any callback set before."""
        with self._lock:
            if self._installed:
                return
            from qcodes.parameters import ParameterBase

            previous = ParameterBase.global_on_set_callback

            def on_set(parameter: Any, value: Any) -> None:
                self._on_set(parameter, value)
                if previous is not None:
                    previous(parameter, value)

            ParameterBase.global_on_set_callback = on_set
            self._installed = True

    def _on_set(self, parameter: Any, value: Any) -> None:
        info = info_of(parameter)
        event = SetEvent(
            next(self._seq), time.time(), info.instrument, info.parameter, info.full_name,
            normalize_value(value), info.unit,
        )  # fmt: skip
        with self._lock:
            targets = [*self._subscriptions], [*self._listeners]
        for subscription in targets[0]:
            subscription.push(event)
        for listener in targets[1]:
            listener(event)

    def subscribe(self) -> Subscription:
        self.install()
        subscription = Subscription()
        with self._lock:
            self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)

    def listen(self, listener: Callable[[SetEvent], None]) -> None:
        """Call ``listener`` with every set from now on (installs the hook)."""
        self.install()
        with self._lock:
            self._listeners.append(listener)


SET_HOOK = SetHook()
