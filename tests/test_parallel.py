"""parallel.py: the merge's threads run calls at once and keep their order."""

import threading

from vmpower.pipeline import parallel


def test_threaded_keeps_order_and_uses_other_threads():
    names = []

    def fn(x):
        names.append(threading.current_thread().name)
        return x * x

    assert parallel.threaded(fn, [1, 2, 3]) == [1, 4, 9]
    assert names.count(threading.current_thread().name) == 1 and len(set(names)) >= 2
    assert parallel.threaded(fn, [5]) == [25] and parallel.threaded(fn, []) == []


def test_at_most_two_threads_and_at_least_one():
    assert 1 <= parallel.THREADS <= 2
