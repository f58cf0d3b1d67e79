"""HPACK with memory (for meshkit.web.h2conn): the `hpack` library's Encoder and Decoder,
remembering the header blocks they made or read while the dynamic table stays the same.

Why: a client repeating requests sends the same block again and again (every field indexed
once the table holds it), and a server's answers to them are the same fields; hpack encodes
and decodes each field in Python, a third of an HTTP/2 request's cost. A block whose coding
changed nothing in the dynamic table codes to the same result while the table stays as it
is, so it is remembered until the next change (an entry added, evicted or the size changed),
which forgets everything. Blocks that add to the table are never remembered.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hpack import Decoder, Encoder
from hpack.table import HeaderTable

__all__ = ["MemoDecoder", "MemoEncoder"]

_MAX_BLOCKS = 256  # remembered blocks per connection and direction
_MAX_BLOCK = 4096  # bytes: larger blocks are coded every time


class _CountingTable(HeaderTable):
    """hpack's table, counting its changes (added entries and size changes)."""

    def __init__(self) -> None:
        super().__init__()
        self.changes = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.changes += 1
        super().add(name, value)

    @HeaderTable.maxsize.setter  # type: ignore[attr-defined,untyped-decorator]
    def maxsize(self, newmax: int) -> None:
        self.changes += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


class MemoEncoder(Encoder):
    """Encoder.encode, remembered per field list while the table is unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.header_table = _CountingTable()
        self._memo: dict[tuple[Any, ...], bytes] = {}
        self._stamp = 0

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        table: _CountingTable = self.header_table  # type: ignore[assignment]
        if table.changes != self._stamp or table.resized:
            self._memo.clear()
            self._stamp = table.changes
        key = tuple(headers)
        block = self._memo.get(key)
        if block is not None:
            return block
        block = super().encode(key, huffman)
        if table.changes != self._stamp:  # this block changed the table: not remembered
            self._memo.clear()
            self._stamp = table.changes
        elif len(block) <= _MAX_BLOCK and all(type(h) is tuple for h in key):
            # (a HeaderTuple may be a never-indexed one: equal as a tuple, coded otherwise)
            if len(self._memo) >= _MAX_BLOCKS:
                self._memo.clear()
            self._memo[key] = block
        return block


class MemoDecoder(Decoder):
    """Decoder.decode (raw), remembered per block while the table is unchanged.

    With `config` (the h2 connection's H2Configuration), h2's inbound field validation is
    skipped for a remembered block: h2 validates each block right after decoding it, and a
    block that fails is a connection error (the connection, and this memory, end there), so
    a block remembered on a live connection has passed; the same bytes with the same table
    are the same fields. (A remembered request head sent again as trailers is not validated
    as trailers: meshkit ignores trailers.)"""

    def __init__(self, max_header_list_size: int, config: Any = None) -> None:
        super().__init__(max_header_list_size=max_header_list_size)
        self.header_table = _CountingTable()
        self._memo: dict[bytes, list[Any]] = {}
        self._stamp = 0
        self._config = config

    def _validate(self, on: bool) -> None:
        if self._config is not None:
            self._config.validate_inbound_headers = on

    def decode(self, data: bytes, raw: bool = False) -> Iterable[Any]:
        table: _CountingTable = self.header_table  # type: ignore[assignment]
        if not raw or len(data) > _MAX_BLOCK:
            self._validate(True)
            return super().decode(data, raw)
        if table.changes != self._stamp:
            self._memo.clear()
            self._stamp = table.changes
        fields = self._memo.get(data)
        if fields is not None:
            self._validate(False)
            return list(fields)
        self._validate(True)
        out = list(super().decode(data, raw))
        if table.changes != self._stamp:  # this block changed the table: not remembered
            self._memo.clear()
            self._stamp = table.changes
            return out
        if len(self._memo) >= _MAX_BLOCKS:
            self._memo.clear()
        self._memo[data] = out
        return list(out)
