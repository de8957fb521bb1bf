"""The layout cache: hits, least-recently-used eviction by member count, oversized layouts."""

from __future__ import annotations

from collections.abc import Iterator

from conveyor.carts.layout import BundleEntry, BundleLayout, make_layout
from conveyor.carts.layout_cache import LayoutCache


def _layout(members: int) -> BundleLayout:
    def read(start: int, end: int) -> Iterator[bytes]:
        yield b"x"[start:end]

    entries = [BundleEntry(f"f{n}", 1, 0.0, "0" * 64, 0, read) for n in range(members)]
    return make_layout("tar", entries)


def test_hits_and_evicts_the_least_recently_used() -> None:
    cache = LayoutCache(max_members=5)
    made: list[str] = []

    def maker(name: str, members: int) -> BundleLayout:
        made.append(name)
        return _layout(members)

    first = cache.get_or_make(("a", "1", ""), lambda: maker("a", 2))
    assert cache.get_or_make(("a", "1", ""), lambda: maker("a", 2)) is first
    cache.get_or_make(("b", "1", ""), lambda: maker("b", 2))
    cache.get_or_make(("a", "1", ""), lambda: maker("a", 2))  # a is now the most recent
    cache.get_or_make(("c", "1", ""), lambda: maker("c", 2))  # 6 members: b goes
    assert made == ["a", "b", "c"]
    assert cache.get_or_make(("a", "1", ""), lambda: maker("a", 2)) is first
    cache.get_or_make(("b", "1", ""), lambda: maker("b", 2))
    assert made == ["a", "b", "c", "b"]


def test_a_layout_larger_than_the_cache_is_not_kept() -> None:
    cache = LayoutCache(max_members=3)
    made: list[int] = []

    def maker() -> BundleLayout:
        made.append(1)
        return _layout(4)

    cache.get_or_make(("big", "1", ""), maker)
    cache.get_or_make(("big", "1", ""), maker)
    assert made == [1, 1]
