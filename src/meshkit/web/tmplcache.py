"""What templates and markdown keep between requests, per file version.

`ParseCache`: parsed templates keyed on what they were parsed from and the file's signature
(path, inode, device, size, mtime_ns, ctime_ns: filecache.Entry.sig), so an edited file is
parsed again and an unchanged one never is.

`OutputCache`: rendered bodies that depend on files alone (no request-dependent input, see
meshkit.web.tmplctx), kept with the signatures of every file or folder they were made from
and served again while each of those still stats the same.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from meshkit.web.filecache import Entry, FileCache
from meshkit.web.message import Validator

V = TypeVar("V")


class LRU(Generic[V]):
    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[Hashable, V] = OrderedDict()

    def get(self, key: Hashable) -> V | None:
        v = self.items.get(key)
        if v is not None:
            self.items.move_to_end(key)
        return v

    def put(self, key: Hashable, value: V) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)


class ParseCache(Generic[V]):
    """name + file signature -> parsed value (made by `make` on a miss)."""

    def __init__(self, size: int = 256) -> None:
        self.lru: LRU[V] = LRU(size)

    def get(self, key: Hashable, sig: Validator, make: Callable[[], V]) -> V:
        k = (key, sig)
        v = self.lru.get(k)
        if v is None:
            v = make()
            self.lru.put(k, v)
        return v


def still_valid(cache: FileCache, deps: tuple[Validator, ...]) -> bool:
    """Does every file or folder in `deps` still stat as it did?"""
    for sig in deps:
        e = cache.lookup(sig[0])
        if not isinstance(e, Entry) or e.sig != sig:
            return False
    return True


class OutputCache:
    """key -> (deps, body): a body made from files alone, valid while they are unchanged."""

    def __init__(self, cache: FileCache, size: int = 256) -> None:
        self.cache = cache
        self.lru: LRU[tuple[tuple[Validator, ...], bytes]] = LRU(size)

    def get(self, key: Hashable) -> bytes | None:
        hit = self.lru.get(key)
        if hit is None:
            return None
        deps, body = hit
        if not still_valid(self.cache, deps):
            self.lru.items.pop(key, None)
            return None
        return body

    def deps(self, key: Hashable) -> tuple[Validator, ...] | None:
        hit = self.lru.items.get(key)
        return hit[0] if hit is not None else None

    def put(self, key: Hashable, deps: list[Validator], body: bytes) -> None:
        self.lru.put(key, (tuple(dict.fromkeys(deps)), body))
