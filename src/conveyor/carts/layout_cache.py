"""Recently used bundle layouts, so downloads and resumes of a big cart do not rebuild it.

A layout is fully determined by the archive it reads and the cart's request hash (file ids,
sha256, paths, options and missing items) plus the folder it is put under, so that triple is
the key and a cached layout is never stale. The cache is bounded by the number of members
it holds (a member costs a few hundred bytes), least recently used first out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from conveyor.carts.layout import BundleLayout

MAX_MEMBERS = 200_000

LayoutKey = tuple[str, str, str]


class LayoutCache:
    """A thread-safe LRU of layouts, bounded by their total number of members."""

    def __init__(self, max_members: int = MAX_MEMBERS) -> None:
        self._max = max_members
        self._layouts: OrderedDict[LayoutKey, BundleLayout] = OrderedDict()
        self._members = 0
        self._lock = threading.Lock()

    def get_or_make(self, key: LayoutKey, make: Callable[[], BundleLayout]) -> BundleLayout:
        """The cached layout for ``key``, or a new one from ``make`` (kept if it fits)."""
        with self._lock:
            found = self._layouts.get(key)
            if found is not None:
                self._layouts.move_to_end(key)
                return found
        layout = make()
        size = len(layout.entries)
        if size > self._max:
            return layout
        with self._lock:
            if key not in self._layouts:
                self._layouts[key] = layout
                self._members += size
            while self._members > self._max:
                _, evicted = self._layouts.popitem(last=False)
                self._members -= len(evicted.entries)
        return layout


LAYOUTS = LayoutCache()
