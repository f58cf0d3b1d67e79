"""The compiled FastCGI hot path (csrc/fcgi_records.c through meshkit._fastpath) against its
pure-Python twin (meshkit.web.fastcgi.records / response): same request bytes, same
parsed replies, and every reply the C side declines is one the general path must take
(it never answers differently). Skipped parts need the built extension; the twin itself is
tested in both modes by the rest of the FastCGI suite."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshkit._ext import load_fastpath
from meshkit.web.fastcgi import fast, records
from meshkit.web.fastcgi.records import Decoder, ProtocolError
from meshkit.web.fastcgi.response import HeadError, parse_head

_fp = load_fastpath()
compiled = pytest.mark.skipif(
    _fp is None or not hasattr(_fp, "fcgi_quick_reply"), reason="extension not built"
)

_BYTES = st.binary(max_size=300)


def _big(low: int, high: int) -> st.SearchStrategy[bytes]:
    """Bytes around a record's 65535-byte limit, cheap to draw."""
    return st.builds(lambda n, b: bytes([b]) * n, st.integers(low, high), st.integers(0, 255))


_PAIRS = st.lists(st.tuples(st.binary(max_size=200), st.binary(max_size=200)), max_size=8)


@compiled
@given(
    st.integers(0, 0xFFFF),
    st.one_of(_BYTES, _big(65530, 65545)),
    st.one_of(st.none(), _BYTES, _big(65534, 131075)),
    st.booleans(),
)
@settings(max_examples=60)
def test_encode_request_is_the_twins_bytes(
    rid: int, params: bytes, stdin: bytes | None, keep: bool
) -> None:
    assert _fp is not None
    got = _fp.fcgi_encode_request(rid, params, stdin, keep)
    assert got == records.encode_request(rid, params, stdin, keep)
    # and it decodes back to the same streams
    recs = Decoder().feed(got)
    assert records.parse_begin_request(recs[0].content) == (records.RESPONDER, keep)
    assert b"".join(r.content for r in recs if r.type == records.PARAMS) == params
    if stdin is not None:
        assert b"".join(r.content for r in recs if r.type == records.STDIN) == stdin


@compiled
@given(st.one_of(_PAIRS, st.lists(st.tuples(_BYTES, st.binary(min_size=127, max_size=130)))))
def test_encode_pairs_is_the_twins_bytes(pairs: list[tuple[bytes, bytes]]) -> None:
    assert _fp is not None
    got = _fp.fcgi_encode_pairs(pairs)
    assert got == records.encode_pairs(pairs)
    assert records.decode_pairs(got) == pairs


# --- replies ---------------------------------------------------------------------------------

_NAME = st.sampled_from(
    ["Content-Type", "X-Powered-By", "Status", "status", "Location", "Content-Length",
     "Connection", "Keep-Alive", "transfer-encoding", "Set-Cookie", "X-A", "Bad Name", ""]
)  # fmt: skip
_VALUE = st.one_of(
    st.sampled_from(["200", "404 Not Found", "99", "600 x", "abc", "12", " 7 ", "", "/x"]),
    st.text(st.characters(min_codepoint=0, max_codepoint=0xFF), max_size=12),
)
_LINE = st.tuples(_NAME, st.sampled_from([":", ": ", " : ", ":\t", ""]), _VALUE)
_EOL = st.sampled_from(["\r\n", "\n", "\r\r\n"])


@st.composite
def _head(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(_LINE, max_size=5))
    eol = draw(_EOL)
    text = "".join(n + s + v + draw(st.sampled_from([eol, eol, "\n"])) for n, s, v in lines)
    text += draw(st.sampled_from(["\r\n", "\n", "", "\r\n\r\n"]))
    return text.encode("latin-1") + draw(st.binary(max_size=20))


def _reply(stdout: bytes, cuts: list[int], pad: int, extra: list[tuple[int, bytes]]) -> bytes:
    """STDOUT cut at `cuts` into records, optional other records, then END_REQUEST."""
    pieces, start = [], 0
    for cut in sorted(c % (len(stdout) + 1) for c in cuts):
        pieces.append(stdout[start:cut])
        start = cut
    pieces.append(stdout[start:])
    out = b"".join(_raw(records.STDOUT, 1, p, pad) for p in pieces if p)
    out += b"".join(_raw(t, 1, c, pad) for t, c in extra)
    out += _raw(records.STDOUT, 1, b"", 0)
    return out + _raw(records.END_REQUEST, 1, bytes([0, 0, 1, 2, 0, 0, 0, 0]), pad)


def _raw(rtype: int, rid: int, content: bytes, pad: int) -> bytes:
    return (
        bytes([1, rtype])
        + rid.to_bytes(2, "big")
        + len(content).to_bytes(2, "big")
        + bytes([pad, 0])
        + content
        + b"\0" * pad
    )


def _python(data: bytes) -> fast.QuickReply | type[Exception] | None:
    """What the general path makes of `data`: the twin's result, or the error it reports."""
    try:
        recs = Decoder().feed(data)
    except ProtocolError:
        return ProtocolError
    stdout = b"".join(r.content for r in recs if r.type == records.STDOUT)
    try:
        head = parse_head(stdout)
    except HeadError:
        return HeadError
    return fast.quick_reply_py(data) if head is not None else None


@compiled
@given(
    _head(),
    st.lists(st.integers(0, 400), max_size=3),
    st.integers(0, 9),
    st.lists(st.tuples(st.sampled_from([records.STDERR, 11]), st.binary(max_size=8)), max_size=1),
)
@settings(max_examples=300)
def test_quick_reply_agrees_with_the_twin(
    stdout: bytes, cuts: list[int], pad: int, extra: list[tuple[int, bytes]]
) -> None:
    assert _fp is not None
    data = _reply(stdout, cuts, pad, extra)
    got = _fp.fcgi_quick_reply(data)
    want = _python(data)
    if got is not None:
        # never a different answer, never an answer where Python reports an error
        assert want == got
    if want in (HeadError, ProtocolError, None):
        assert got is None
    if extra:
        assert got is None and fast.quick_reply_py(data) is None  # STDERR: the general path


def _plain_head(draw: Callable[[st.SearchStrategy[Any]], Any]) -> bytes:
    name = st.text("ABCXYZabcxyz-", min_size=1, max_size=8)
    value = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=10)
    lines = draw(st.lists(st.tuples(name, value), min_size=1, max_size=5))
    eol = draw(st.sampled_from(["\r\n", "\n"]))
    text: str = "".join(f"{n}: {v}{eol}" for n, v in lines) + eol
    return text.encode()


@compiled
@given(st.data(), st.binary(max_size=50), st.lists(st.integers(0, 200), max_size=3))
def test_quick_reply_takes_every_plain_head(
    data: st.DataObject, body: bytes, cuts: list[int]
) -> None:
    """Printable heads the C side must not decline (else the hot path would be rare)."""
    assert _fp is not None
    reply = _reply(_plain_head(data.draw) + body, cuts, 0, [])
    want = fast.quick_reply_py(reply)
    assert want is not None
    assert _fp.fcgi_quick_reply(reply) == want


@compiled
def test_quick_reply_declines_cut_and_foreign_replies() -> None:
    assert _fp is not None
    whole = _reply(b"Status: 404 Not Found\r\nX-A: b\r\n\r\nnope", [5, 17], 3, [])
    got = _fp.fcgi_quick_reply(whole)
    assert got == (404, [("X-A", "b")], None, b"nope", 0x0102, 0)
    for cut in range(len(whole)):  # every split of the read
        assert _fp.fcgi_quick_reply(whole[:cut]) is None
    assert _fp.fcgi_quick_reply(whole + b"\0") is None  # bytes after END_REQUEST
    other = whole.replace(b"\x01\x06\x00\x01", b"\x01\x06\x00\x02", 1)  # request id 2
    assert _fp.fcgi_quick_reply(other) is None
    assert _fp.fcgi_quick_reply(b"\x02" + whole[1:]) is None  # version 2
    no_head = _reply(b"no blank line", [], 0, [])
    assert _fp.fcgi_quick_reply(no_head) is None and fast.quick_reply_py(no_head) is None
    loc = _fp.fcgi_quick_reply(_reply(b"Location: /x\nContent-Length: 007\n\n", [], 0, []))
    assert loc == (302, [("Location", "/x"), ("Content-Length", "007")], 7, b"", 0x0102, 0)


def test_is_regular_file_both_ways(tmp_path: Path) -> None:
    (tmp_path / "f.php").write_text("<?php")
    (tmp_path / "d").mkdir()
    os.symlink(tmp_path / "f.php", tmp_path / "link.php")
    os.symlink(tmp_path / "gone", tmp_path / "dangling.php")
    impls = [fast.is_regular_file_py]
    if _fp is not None and hasattr(_fp, "fcgi_is_regular_file"):
        impls.append(_fp.fcgi_is_regular_file)
    for is_reg in impls:
        assert is_reg(str(tmp_path / "f.php"))
        assert is_reg(str(tmp_path / "link.php"))
        assert not is_reg(str(tmp_path / "d"))
        assert not is_reg(str(tmp_path / "dangling.php"))
        assert not is_reg(str(tmp_path / "missing"))
        assert not is_reg(str(tmp_path / "f.php\0x"))
        assert not is_reg("\ud800")
        assert not is_reg(str(tmp_path / "f.php" / "x"))


# --- the remembered route plans against route() ------------------------------------------------

_SEGMENT = st.sampled_from(
    ["", ".", "..", "a", "b.php", "B.PHP", "x.php.txt", "dir", "upload.jpg", "index.php",
     "gone.php", "skip", "p\\q", "n\0"]
)  # fmt: skip


@given(st.lists(_SEGMENT, min_size=1, max_size=4), st.booleans(), st.data())
@settings(max_examples=100, deadline=None)
def test_rule_target_agrees_with_route(
    tmp_path_factory: pytest.TempPathFactory, segs: list[str], trailing: bool, data: st.DataObject
) -> None:
    """_Rule.target (plans remembered by path, is_file asked each time) answers as route()
    on clean_path's output, asked twice (the second time from the remembered plan), also
    after the script went away."""
    from meshkit.web.directives.fastcgi import _REFUSED, FastCGIRule, _Rule
    from meshkit.web.fastcgi.env import route
    from meshkit.web.fileserver import clean_path
    from meshkit.web.site import Site

    root = tmp_path_factory.mktemp("www")
    for name in ("b.php", "B.PHP", "index.php", "dir/index.php", "dir/b.php", "upload.jpg"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("<?php")
    base = data.draw(st.sampled_from(["/", "/dir"]))
    split = data.draw(st.sampled_from([[".php"], [], [".php", ".jpg"]]))
    rule = _Rule(
        FastCGIRule(base, ["127.0.0.1:9"], ext=".php", split=split, index=["index.php"],
                    except_paths=data.draw(st.sampled_from([[], ["/skip"]]))),
        Site(addresses=[], root=str(root)),
    )  # fmt: skip
    path = "/" + "/".join(segs) + ("/" if trailing else "")

    def want() -> object:
        clean = clean_path(path)
        if clean is None:
            return _REFUSED
        return route(
            clean, base=rule.base, ext=rule.ext, splits=rule.split, index_files=rule.index,
            except_paths=rule.except_paths, is_file=rule.is_file,
        )  # fmt: skip

    try:
        for _ in range(2):
            assert rule.target(path) == want()
        for name in ("b.php", "dir/b.php"):
            (root / name).unlink()
        assert rule.target(path) == want()
    finally:
        rule.client.close()


@compiled
def test_encoders_take_bytes_like_and_refuse_the_rest() -> None:
    assert _fp is not None
    pairs: Any = [(b"A", bytearray(b"b")), (memoryview(b"C"), b"d" * 200)]
    assert _fp.fcgi_encode_pairs(pairs) == records.encode_pairs(pairs)
    body: Any = bytearray(b"x" * 70000)
    assert _fp.fcgi_encode_request(1, b"p", body) == records.encode_request(1, b"p", body)
    for bad in ([(None, b"")], [(5, b"")]):
        with pytest.raises(TypeError):
            _fp.fcgi_encode_pairs(bad)
    with pytest.raises(TypeError):
        _fp.fcgi_encode_request(1, b"p", 5)
    with pytest.raises(ValueError, match="out of range"):
        _fp.fcgi_encode_request(0x10000, b"p")


_FIELD_NAMES = st.one_of(
    st.sampled_from(["Content-Length", "content-length", "CONTENT-LENGTH", "Content-Lengt"]),
    st.sampled_from(["Content-Lengthx", "Host", "\u212aey", "\u0130", "Content-Length\u00e9"]),
    st.text(max_size=16),
)


@compiled
@given(
    st.lists(st.tuples(_FIELD_NAMES, st.text(max_size=4)), max_size=6),
    st.sampled_from(["content-length", "key", "i\u0307", "host", ""]),
)
def test_has_field_agrees_with_the_twin_and_headers(
    items: list[tuple[str, str]], name: str
) -> None:
    from meshkit.web.message import Headers

    assert _fp is not None
    want = fast.has_field_py(items, name)
    assert _fp.fcgi_has_field(items, name) is want
    if name.isascii():
        assert want is (name in Headers(items))
