"""TimerHeap: the deadline heap the sans-I/O core runs on."""

from __future__ import annotations

from presenced.transaction import TimerHandle, TimerHeap
from presenced.transaction.timers import DelayQueue


def collector():
    fired: list[tuple[float, object]] = []

    def cb(now, tag):
        fired.append((now, tag))

    return fired, cb


def test_empty_heap():
    th = TimerHeap()
    assert th.next_deadline() is None
    assert th.run_due(1e9) == 0
    assert len(th) == 0


def test_fires_in_deadline_order_regardless_of_insertion_order():
    th = TimerHeap()
    fired, cb = collector()
    for when in (5.0, 1.0, 3.0, 2.0, 4.0):
        th.schedule(when, cb, when)
    assert th.next_deadline() == 1.0
    assert th.run_due(10.0) == 5
    assert [tag for _, tag in fired] == [1.0, 2.0, 3.0, 4.0, 5.0]
    # Callbacks get the run's `now`.
    assert all(now == 10.0 for now, _ in fired)


def test_equal_deadlines_fire_in_scheduling_order():
    th = TimerHeap()
    fired, cb = collector()
    for tag in "abcdef":
        th.schedule(1.0, cb, tag)
    th.run_due(1.0)
    assert "".join(tag for _, tag in fired) == "abcdef"


def test_run_due_fires_only_due_timers():
    th = TimerHeap()
    fired, cb = collector()
    th.schedule(1.0, cb, "a")
    th.schedule(2.0, cb, "b")
    th.schedule(2.0000001, cb, "c")
    assert th.run_due(0.999) == 0
    assert fired == []
    assert th.run_due(2.0) == 2  # a deadline equal to now is due
    assert [t for _, t in fired] == ["a", "b"]
    assert th.next_deadline() == 2.0000001
    assert th.run_due(3.0) == 1
    assert [t for _, t in fired] == ["a", "b", "c"]
    assert th.next_deadline() is None


def test_each_timer_fires_once():
    th = TimerHeap()
    fired, cb = collector()
    th.schedule(1.0, cb, "a")
    th.run_due(1.0)
    th.run_due(2.0)
    th.run_due(3.0)
    assert len(fired) == 1


def test_extra_args_are_passed():
    th = TimerHeap()
    got = []
    th.schedule(1.0, lambda now, *a: got.append((now, a)), 1, "two", None)
    th.run_due(1.5)
    assert got == [(1.5, (1, "two", None))]


def test_cancel_prevents_firing():
    th = TimerHeap()
    fired, cb = collector()
    a = th.schedule(1.0, cb, "a")
    th.schedule(2.0, cb, "b")
    assert isinstance(a, TimerHandle)
    a.cancel()
    assert th.run_due(5.0) == 1
    assert [t for _, t in fired] == ["b"]


def test_cancel_after_firing_and_double_cancel_are_harmless():
    th = TimerHeap()
    fired, cb = collector()
    a = th.schedule(1.0, cb, "a")
    th.run_due(1.0)
    a.cancel()
    a.cancel()
    assert [t for _, t in fired] == ["a"]


def test_next_deadline_skips_cancelled():
    th = TimerHeap()
    fired, cb = collector()
    a = th.schedule(1.0, cb, "a")
    b = th.schedule(2.0, cb, "b")
    th.schedule(3.0, cb, "c")
    a.cancel()
    assert th.next_deadline() == 2.0
    b.cancel()
    assert th.next_deadline() == 3.0
    # Cancelled heads were dropped; the live timer is untouched.
    assert len(th) == 1
    th.run_due(3.0)
    assert [t for _, t in fired] == ["c"]
    assert th.next_deadline() is None


def test_next_deadline_all_cancelled():
    th = TimerHeap()
    hs = [th.schedule(float(i), lambda now: None) for i in range(5)]
    for x in hs:
        x.cancel()
    assert th.next_deadline() is None
    assert th.run_due(100.0) == 0


def test_cancel_from_inside_a_callback():
    """A due timer cancelled by an earlier callback of the same run is skipped."""
    th = TimerHeap()
    fired, cb = collector()
    holder: dict[str, TimerHandle] = {}
    th.schedule(1.0, lambda now: holder["victim"].cancel())
    holder["victim"] = th.schedule(1.0, cb, "victim")
    th.schedule(1.0, cb, "survivor")
    assert th.run_due(1.0) == 2
    assert [t for _, t in fired] == ["survivor"]


def test_timer_scheduled_from_callback():
    th = TimerHeap()
    fired, cb = collector()

    def first(now):
        fired.append((now, "first"))
        th.schedule(now, cb, "due-now")  # already due: runs in this same run_due
        th.schedule(now + 1.0, cb, "future")  # not yet due

    th.schedule(1.0, first)
    assert th.run_due(1.0) == 2
    assert [t for _, t in fired] == ["first", "due-now"]
    assert th.next_deadline() == 2.0
    assert th.run_due(1.5) == 0
    assert th.run_due(2.0) == 1
    assert [t for _, t in fired] == ["first", "due-now", "future"]


def test_periodic_rescheduling_from_callback():
    th = TimerHeap()
    ticks: list[float] = []

    def tick(now):
        ticks.append(now)
        if len(ticks) < 5:
            th.schedule(now + 2.0, tick)

    th.schedule(0.0, tick)
    now = 0.0
    while (d := th.next_deadline()) is not None:
        now = d
        th.run_due(now)
    assert ticks == [0.0, 2.0, 4.0, 6.0, 8.0]


def test_run_due_late_fires_everything_overdue_once():
    th = TimerHeap()
    fired, cb = collector()
    for i in range(100):
        th.schedule(i * 0.1, cb, i)
    assert th.run_due(1000.0) == 100
    assert [t for _, t in fired] == list(range(100))


def test_delay_queue_goes_on_after_a_failing_callback():
    from presenced.transaction.timers import DelayQueue, TimerHeap

    heap = TimerHeap()
    seen = []

    def expire(now, item):
        seen.append(item)
        if item == "bad":
            raise RuntimeError(item)

    q = DelayQueue(heap, expire)
    q.add(1.0, "bad")
    q.add(2.0, "good")
    try:
        heap.run_due(1.5)
    except RuntimeError:
        pass
    heap.run_due(3.0)
    assert seen == ["bad", "good"]


def test_cancel_lets_go_of_the_callback_and_its_arguments():
    """A cancelled entry waits in the heap until its time; what it would have
    run (a bound method, its object, the arguments) must not wait with it."""
    import gc
    import weakref

    class Owner:
        def fire(self, now: float, arg: object) -> None:
            raise AssertionError("cancelled timer fired")

    class Arg:
        pass

    heap = TimerHeap()
    owner, arg = Owner(), Arg()
    h = heap.schedule(30.0, owner.fire, arg)
    refs = weakref.ref(owner), weakref.ref(arg)
    h.cancel()
    del owner, arg
    gc.collect()
    assert [r() for r in refs] == [None, None]
    assert heap.run_due(31.0) == 0


def test_lax_queue_heads_count_late_but_run_on_any_wake_up():
    """Timer J / K queues (lax): next_deadline reports their head `lax_slack`
    late, and run_due expires whatever of them is due, whoever woke it."""
    th = TimerHeap()
    fired: list[tuple[float, str]] = []
    lax = DelayQueue(th, lambda now, item: fired.append((now, item)), lax=True)
    assert lax.add(1.0, "j1") and lax.add(1.5, "j2")
    assert th.next_deadline() == 1.0 and th.next_deadline(lax_slack=1.0) == 2.0
    th.schedule(1.2, lambda now: fired.append((now, "precise")))
    assert th.next_deadline(lax_slack=1.0) == 1.2
    th.run_due(1.2)  # the precise timer's wake-up also takes the due lax item
    assert fired == [(1.2, "j1"), (1.2, "precise")] or fired == [(1.2, "precise"), (1.2, "j1")]
    assert th.next_deadline(lax_slack=1.0) == 2.5
    th.run_due(2.5)
    assert fired[-1] == (2.5, "j2") and th.next_deadline(lax_slack=1.0) is None and len(lax) == 0



def test_pruned_queue_reports_its_first_live_head_on_time_and_drops_dead_ones():
    """A queue with a `live` test (a NOTIFY's first Timer E, record expiry):
    dead heads are dropped by next_deadline, so nothing wakes up for them; a
    live head is reported on time (no lax slack) and fires."""
    th = TimerHeap()
    fired: list[tuple[float, str]] = []
    alive = {"b", "d"}
    q = DelayQueue(th, lambda now, item: fired.append((now, item)), live=lambda when, item: item in alive)
    for when, item in ((1.0, "a"), (2.0, "b"), (3.0, "c"), (4.0, "d")):
        assert q.add(when, item)
    assert len(th) == 0  # no heap entry
    assert th.next_deadline(lax_slack=1.0) == 2.0  # "a" dropped, "b" on time
    assert len(q) == 3
    alive.discard("b")
    assert th.next_deadline(lax_slack=1.0) == 4.0  # "b" and "c" dropped
    th.run_due(3.9)
    assert fired == []
    th.run_due(4.0)
    assert fired == [(4.0, "d")] and len(q) == 0 and th.next_deadline() is None


def test_pruned_queue_still_fires_a_due_dead_item_nobody_pruned():
    """run_due without a prior next_deadline expires what is due, dead or not:
    the callback's own checks stay the safety net."""
    th = TimerHeap()
    fired: list[str] = []
    q = DelayQueue(th, lambda now, item: fired.append(item), live=lambda when, item: False)
    q.add(1.0, "x")
    assert th.run_due(1.0) == 1 and fired == ["x"]
