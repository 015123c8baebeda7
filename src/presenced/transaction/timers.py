"""A deadline heap: the one timer mechanism of the sans-I/O core.

Everything that expires (transactions, publications, subscriptions) puts a
deadline here; the runtime arms one OS timer for `next_deadline()` and calls
`run_due(now)`. Cancellation is lazy: a cancelled entry stays in the heap and
is skipped when popped, which keeps cancel O(1).

`call_at` is the compact form for the records the engine holds by the
hundred thousand (publication and subscription expiry): one heap tuple and no
handle; it cannot be cancelled, so its callback must check that the record
still expires then (a refresh simply adds a new entry).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Any, Callable


def _never_called(*args: Any) -> None:
    """What a cancelled handle holds instead of its callback."""


class TimerHandle:
    __slots__ = ("when", "callback", "args", "cancelled")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        # The entry stays in the heap until its time: let go of what it would run
        # (a bound method and its arguments would otherwise live on, GC-tracked,
        # until the deadline: Timer F of every answered NOTIFY for 32 s).
        self.cancelled = True
        self.callback = _never_called
        self.args = ()


# Marks a heap entry whose last element is a TimerHandle (from `schedule`).
_HANDLE = None


class TimerHeap:
    __slots__ = ("_heap", "_seq", "_off_heap")

    def __init__(self) -> None:
        # (when, seq, callback, arg): callback None = arg is a TimerHandle.
        self._heap: list[tuple[float, int, Any, Any]] = []
        self._seq = itertools.count()
        # DelayQueues kept out of the heap: lax ones (clean-up that may run
        # late: Timer J, Timer K), whose heads count `lax_slack` late in
        # next_deadline, and pruned ones (a `live` test), whose dead heads
        # next_deadline drops so that nothing wakes up for them.
        self._off_heap: list[DelayQueue] = []

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, when: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        h = TimerHandle(when, callback, args)
        heapq.heappush(self._heap, (when, next(self._seq), _HANDLE, h))
        return h

    def call_at(self, when: float, callback: Callable[[float, Any], Any], arg: Any) -> None:
        """Run `callback(now, arg)` at `when`; no handle, cannot be cancelled."""
        heapq.heappush(self._heap, (when, next(self._seq), callback, arg))

    def next_deadline(self, lax_slack: float = 0.0) -> float | None:
        """When `run_due` next has work; lax queues' heads `lax_slack` later
        (the runtime wakes for them at most once per slack, and any earlier
        wake-up runs them too)."""
        heap = self._heap
        while heap and heap[0][2] is _HANDLE and heap[0][3].cancelled:
            heapq.heappop(heap)
        best = heap[0][0] if heap else None
        for q in self._off_heap:
            whens = q.whens
            live = q.live
            if live is not None:
                items = q.items
                while whens and not live(whens[0], items[0]):
                    whens.popleft()
                    items.popleft()
            if whens:
                w = whens[0] if live is not None else whens[0] + lax_slack
                if best is None or w < best:
                    best = w
        return best

    def run_due(self, now: float) -> int:
        """Fire every timer due at `now`; returns how many fired."""
        heap = self._heap
        fired = 0
        while heap and heap[0][0] <= now:
            _, _, cb, h = heapq.heappop(heap)
            if cb is not _HANDLE:
                cb(now, h)
                fired += 1
                continue
            if h.cancelled:
                continue
            h.cancelled = True
            h.callback(now, *h.args)
            fired += 1
        for q in self._off_heap:
            fired += q.expire_due(now)
        return fired


class DelayQueue:
    """Timers that all run `expire(now, item)` a fixed delay after being added.

    With one delay and a clock that only moves forward, deadlines arrive in
    order: two deques (deadlines, items) plus one TimerHeap entry for the
    head replace a heap entry per item (Timer J for every answered request,
    Timer K for every NOTIFY) and allocate nothing per item, so nothing new
    for the cyclic GC to scan. `add` returns False when a deadline would be
    out of order (the clock went back); the caller then schedules that item
    on the heap.
    """

    __slots__ = ("timers", "expire", "whens", "items", "handle", "live", "off_heap")

    def __init__(self, timers: TimerHeap, expire: Callable[[float, Any], Any], lax: bool = False,
                 live: Callable[[float, Any], bool] | None = None) -> None:
        self.timers = timers
        self.expire = expire
        self.whens: deque[float] = deque()
        self.items: deque[Any] = deque()
        self.handle: TimerHandle | None = None
        # Lax: no heap entry; TimerHeap.run_due expires what is due whenever it
        # runs, and next_deadline reports the head late by the runtime's slack.
        # live(when, item): False once the item's timer would do nothing (an
        # answered NOTIFY's Timer E, a refreshed record's old deadline). Such a
        # queue has no heap entry either: next_deadline drops dead heads and
        # reports the first live one on time, so the runtime never wakes up
        # for a timer that has nothing to do (at 200 NOTIFYs/s that was a
        # wake-up every few ms, each one on cold caches).
        self.live = live
        self.off_heap = lax or live is not None
        if self.off_heap:
            timers._off_heap.append(self)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, when: float, item: Any) -> bool:
        whens = self.whens
        if whens and when < whens[-1]:
            return False
        whens.append(when)
        self.items.append(item)
        if self.handle is None and not self.off_heap:
            self.handle = self.timers.schedule(when, self._run)
        return True

    def expire_due(self, now: float) -> int:
        """Expire every item due by `now` (a lax queue's turn, or the head's timer)."""
        whens = self.whens
        items = self.items
        expire = self.expire
        n = 0
        while whens and whens[0] <= now:
            whens.popleft()
            expire(now, items.popleft())
            n += 1
        return n

    def _run(self, now: float) -> None:
        try:
            self.expire_due(now)
        finally:  # a failing callback must not leave the rest without a timer
            whens = self.whens
            self.handle = self.timers.schedule(whens[0], self._run) if whens else None
