"""The Predictor's LRU: bounded (under concurrency too), the least recently used entry evicted first."""

from __future__ import annotations

import threading

from mmcore.lru import LRU


def test_the_least_recently_used_entry_goes_first():
    cache = LRU(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3


def test_get_or_makes_a_missing_value_and_keeps_it():
    cache, made = LRU(4), []
    for _ in range(3):
        assert cache.get_or("k", lambda: made.append(1) or "v") == "v"
    assert made == [1]
    threads = [threading.Thread(target=cache.get_or, args=(f"t{i}", lambda: 0)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(cache.get(f"t{i}") == 0 for i in range(8)) == 4  # never more than its size
