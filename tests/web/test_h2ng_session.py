"""meshkit._h2ng.Session without sockets: python-hyper's h2 as the client, bytes passed by
hand. What the e2e tests cannot easily reach: the advertised stream limit (the SETTINGS value
replaced on the way out), a file body that turns out shorter than its length, a streamed body
that waits for its producer, the request key of the response cache."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from meshkit.web.h2remember import request_key
from web.h2engines import nghttp2_built

pytestmark = pytest.mark.skipif(not nghttp2_built(), reason="meshkit._h2ng not built or off")


class Owner:
    """What a Session calls back (NgH2Connection's _ng_* methods), recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def _ng_request(self, sid: int, fields: list[Any], key: bytes | None, ended: bool) -> None:
        self.calls.append(("request", sid, fields, key, ended))

    def _ng_data(self, sid: int, data: bytes) -> None:
        self.calls.append(("data", sid, data))

    def _ng_end(self, sid: int) -> None:
        self.calls.append(("end", sid))

    def _ng_reset(self, sid: int) -> None:
        self.calls.append(("reset", sid))

    def _ng_closed(self, sid: int, sent: int) -> None:
        self.calls.append(("closed", sid, sent))

    def _ng_sent_end(self, sid: int, sent: int) -> None:
        self.calls.append(("sent_end", sid, sent))

    def _ng_control(self, kind: int) -> None:
        self.calls.append(("control", kind))


def _pair() -> tuple[Any, Owner, h2.connection.H2Connection, list[Any]]:
    _h2ng = importlib.import_module("meshkit._h2ng")

    owner = Owner()
    session = _h2ng.Session(owner, 250, 1000, 65536, 262144, 1 << 20)
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    events = client.receive_data(session.send(1 << 20))
    assert session.receive(client.data_to_send()) > 0
    return session, owner, client, events


def _exchange(session: Any, client: h2.connection.H2Connection) -> list[Any]:
    data = client.data_to_send()
    if data:
        assert session.receive(data) >= 0
    events = client.receive_data(session.send(1 << 20))
    rest = client.data_to_send()
    if rest:
        session.receive(rest)
    return events


def _get(client: h2.connection.H2Connection, path: str = "/") -> int:
    sid = client.get_next_available_stream_id()
    head = [(":method", "GET"), (":path", path), (":scheme", "https"), (":authority", "a")]
    client.send_headers(sid, head, end_stream=True)
    return sid


def test_the_client_is_told_the_stream_limit_and_requests_arrive_split() -> None:
    from meshkit.web.h2conn import split_request

    session, owner, client, events = _pair()
    changed = next(e for e in events if isinstance(e, h2.events.RemoteSettingsChanged))
    assert changed.changed_settings[SettingCodes.MAX_CONCURRENT_STREAMS].new_value == 250
    assert changed.changed_settings[SettingCodes.MAX_HEADER_LIST_SIZE].new_value == 65536
    sid = _get(client, "/a?b")
    _exchange(session, client)
    kind, got_sid, split, key, ended = owner.calls[-1]
    assert (kind, got_sid, ended) == ("request", sid, True)
    raw = [(b":method", b"GET"), (b":path", b"/a?b"), (b":scheme", b"https"),
           (b":authority", b"a")]  # fmt: skip
    assert split == (b"GET", b"/a?b", b"a", [], 170, False, None, None)
    assert split == split_request(raw, 8190)  # the pure twin, for the h2 engine
    assert key == b"h2\0:method\0GET\n:path\0/a?b\n:scheme\0https\n:authority\0a\n"
    assert key == request_key(raw)  # the pure twin, for the h2 engine
    assert request_key([(b"x", b"v" * 5000)]) is None  # past MAX_HEAD: never remembered
    # the same list again (HPACK-indexed this time) has the same key
    _get(client, "/a?b")
    _exchange(session, client)
    assert owner.calls[-1][3] == key


def test_bytes_and_file_bodies_and_a_file_that_got_shorter(tmp_path: Path) -> None:
    _h2ng = importlib.import_module("meshkit._h2ng")

    session, owner, client, _ = _pair()
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(200_000))
    fd = os.open(path, os.O_RDONLY)
    try:
        a, b, c = _get(client), _get(client), _get(client)
        _exchange(session, client)
        fields = [(b":status", b"200")]
        assert session.respond(a, fields, _h2ng.Source.of_bytes(b"hello")) == 0
        assert session.respond(b, fields, _h2ng.Source.of_file(fd, 1000, 150_000)) == 0
        assert session.respond(c, fields, _h2ng.Source.of_file(fd, 150_000, 100_000)) == 0
        bodies: dict[int, bytes] = {a: b"", b: b"", c: b""}
        resets = {}
        for _ in range(40):  # the client's default windows: it acknowledges as it reads
            for ev in _exchange(session, client):
                if isinstance(ev, h2.events.DataReceived):
                    bodies[ev.stream_id] += ev.data
                    client.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamReset):
                    resets[ev.stream_id] = ev.error_code
        data = path.read_bytes()
        assert bodies[a] == b"hello" and bodies[b] == data[1000:151_000]
        assert resets == {c: ErrorCodes.INTERNAL_ERROR}  # 50 000 bytes short
        sent = {call[1]: call[2] for call in owner.calls if call[0] == "sent_end"}
        assert sent == {a: 5, b: 150_000}
        # a stream's close is told only when its end was not (the reset one)
        closed = {call[1] for call in owner.calls if call[0] == "closed"}
        assert closed == {c}
    finally:
        os.close(fd)


def test_a_streamed_body_waits_for_its_producer() -> None:
    _h2ng = importlib.import_module("meshkit._h2ng")

    session, owner, client, _ = _pair()
    sid = _get(client)
    _exchange(session, client)
    src = _h2ng.Source()
    assert session.respond(sid, [(b":status", b"200")], src) == 0
    events = _exchange(session, client)
    assert not any(isinstance(e, h2.events.DataReceived) for e in events) and src.deferred
    src.add(b"one ")
    src.add(b"two")
    session.resume(sid, src)
    events = _exchange(session, client)
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == (b"one two")
    assert not any(isinstance(e, h2.events.StreamEnded) for e in events)
    src.eof = True
    session.resume(sid, src)
    events = _exchange(session, client)
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)
    assert ("sent_end", sid, 7) in owner.calls


@pytest.mark.parametrize(
    "raw",
    [
        [(b":method", b"GET"), (b":path", b"/x"), (b":authority", b"a.test"),
         (b":scheme", b"https")],
        [(b":method", b"POST"), (b":path", b"/"), (b"cookie", b"a=1"), (b"x-a", b"\xe9"),
         (b"cookie", b"b=2"), (b"host", b"h1"), (b"host", b"h2"), (b"content-length", b"12"),
         (b"content-length", b"13"), (b"x-long", b"v" * 9000)],
        [],
    ],
)  # fmt: skip
def test_split_request_twins_agree(raw: list[tuple[bytes, bytes]]) -> None:
    _h2ng = importlib.import_module("meshkit._h2ng")
    from meshkit.web.h2conn import split_request

    assert _h2ng.split_request(raw, 8190) == split_request(raw, 8190)


@pytest.mark.parametrize(
    "fields",
    [
        [],
        [("cookie", "a=1"), ("x-a", "\xe9t\xe9"), ("cookie", "b=2"), ("host", "a"),
         ("user-agent", "u"), ("accept", "*/*"), ("cookie", "c=3")],
        [("x-long", "v" * 9000), ("content-length", "0"), ("host", "a"), ("x-b", "")],
    ],
)  # fmt: skip
def test_requests_split_while_decoded_match_the_pure_split(fields: list[tuple[str, str]]) -> None:
    """The split nghttp2's engine makes while HPACK decodes equals split_request's (the h2
    engine's) of the same header list, twice (the second time HPACK-indexed)."""
    from meshkit.web.h2conn import split_request

    session, owner, client, _ = _pair()
    head = [(":method", "GET"), (":path", "/p?q"), (":scheme", "https"), (":authority", "a")]
    head += fields
    raw = [(k.encode(), v.encode("latin-1")) for k, v in head]
    for _ in range(2):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, raw, end_stream=True)
        _exchange(session, client)
        kind, got_sid, split, key, ended = owner.calls[-1]
        assert (kind, got_sid, ended) == ("request", sid, True)
        assert split == split_request(raw, 8190)
        assert key == request_key(raw)


@pytest.mark.parametrize(
    ("status", "fields", "length"),
    [
        (200, [("Content-Type", "text/plain"), ("ETag", ' "x" ')], 5),
        (304, [("Server", ""), ("Date", "then"), ("Connection", "close")], 5),
        (204, [("Content-Length", "0"), ("X-\xe9", "v")], 0),
        (200, [("X-A", "caf\xe9"), ("Transfer-Encoding", "chunked"), ("TE", "x")], None),
        (200, [("X-A", "a\r\nb")], 1),
        (200, [("Bad Name", "v")], 1),
        (200, [("", "v")], 1),
    ],
)
def test_response_fields_twins_agree(
    status: int, fields: list[tuple[str, str]], length: Any
) -> None:
    _h2ng = importlib.import_module("meshkit._h2ng")
    from meshkit.web import http1
    from meshkit.web.h2stream import response_fields
    from meshkit.web.message import Headers

    def run(f: Any, *args: Any) -> Any:
        try:
            return f(status, Headers(fields), length, *args)
        except ValueError:
            return ValueError

    assert run(_h2ng.response_fields, http1.http_date()) == run(response_fields)


class FastOwner(Owner):
    """An owner that takes the compiled stream path (NgH2Connection's attributes it reads),
    with a handler that answers 200 or returns an awaitable, recording what it is given."""

    _ng_fast = True

    def __init__(self, handler: Any) -> None:
        super().__init__()
        from meshkit.web.respcache import ResponseCache

        self._server = type(
            "Srv",
            (),
            {
                "_caching": True,
                "_cache": ResponseCache(),
                "_max_fields": 100,
                "_header_limit": 65536,
                "_now": 42.0,
                "_handler": staticmethod(handler),
            },
        )()
        self._streams: dict[int, Any] = {}
        self._sending: dict[int, Any] = {}
        self._goaway_at: int | None = None
        self._addrs = ("192.0.2.1", 5000, "192.0.2.2", 443)
        self._scheme = "https"
        self._active_since = 0.0
        self.requests = 0

    def _respond(self, st: Any, response: Any) -> None:
        self.calls.append(("respond", st.id, st.request, response.status))

    def _later(self, st: Any, result: Any) -> None:
        self.calls.append(("later", st.id, st.request))
        result.close()

    def _remember(self, key: bytes, result: Any, request: Any) -> None:
        self.calls.append(("remember", key))


def test_the_compiled_stream_path_builds_the_request_or_hands_over() -> None:
    """A request without a body is taken by meshkit._h2ng's stream path (the Request the
    twin builds, the handler, _respond; an awaitable to _later); a remembered key, a head
    over the limits and a request with a body go to _ng_request (the Python twin)."""
    _h2ng = importlib.import_module("meshkit._h2ng")
    from meshkit.web.h2stream import Stream, _asked, _current, answer_for
    from meshkit.web.http1 import HttpError, parse_target
    from meshkit.web.message import EmptyBody, FileBody, Headers, Request, Response

    _h2ng.set_stream_path(Request, Headers, EmptyBody, Stream, Response, FileBody, parse_target,
                          HttpError, answer_for, _current, _asked, 250, 65536)  # fmt: skip
    seen: list[Any] = []

    def handler(request: Request) -> Any:
        seen.append(_current[0])
        if request.path == "/bytes":
            return Response(200, Headers([("X-A", "1")]), b"hello")
        if request.path == "/file":
            return Response(206, Headers([]), FileBody(fd, 2, 5, 10, None, release))
        if request.path == "/later":

            async def later() -> Response:
                return Response(200)

            return later()
        return Response(200)

    released: list[Any] = []
    fd = os.open(__file__, os.O_RDONLY)

    def release() -> None:
        released.append(fd)

    owner = FastOwner(handler)
    session = _h2ng.Session(owner, 250, 1000, 65536, 262144, 1 << 20)
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    client.receive_data(session.send(1 << 20))
    session.receive(client.data_to_send())

    events: list[Any] = []

    def send(path: str, extra: tuple[tuple[str, str], ...] = (), end: bool = True) -> int:
        sid = client.get_next_available_stream_id()
        head = [(":method", "GET"), (":path", path), (":scheme", "https"),
                (":authority", "a.test:8443"), *extra]  # fmt: skip
        client.send_headers(sid, head, end_stream=end)
        events[:] = _exchange(session, client)
        return sid

    sid = send("/x%41/y?q=1", (("cookie", "a=1"), ("cookie", "b=2"), ("x-v", "\xe9")))
    kind, got, request, status = owner.calls[-1]
    assert (kind, got, status) == ("respond", sid, 200)
    assert (request.method, request.uri, request.path, request.query) == (
        "GET", "/x%41/y?q=1", "/xA/y", "q=1")  # fmt: skip
    assert request.version == "2.0" and request.scheme == "https"
    assert request.host == "a.test:8443" and request.headers.get("host") == "a.test:8443"
    assert request.headers.get("cookie") == "a=1; b=2"
    assert request.headers.get("x-v") == "\xc3\xa9"  # the client's UTF-8, read as latin-1
    assert (request.remote_addr, request.remote_port) == ("192.0.2.1", 5000)
    assert (request.server_addr, request.server_port) == ("192.0.2.2", 443)
    assert isinstance(request.body, EmptyBody) and request.start_time > 0
    assert owner._streams[sid].request is request and owner.requests == 1
    assert owner._active_since == 42.0 and seen[-1] == (owner, sid, "a.test:8443")
    assert _current[0] is None  # the pusher is only set while the handler runs

    sid = send("/later")
    assert owner.calls[-1][:2] == ("later", sid)

    # a key the cache holds: the twin's _request decides (answer, or drop a stale one)
    key = _h2ng_key(client, "/x")
    owner._server._cache.entries[key] = object()
    sid = send("/x")
    assert owner.calls[-1][:2] == ("request", sid) and sid not in owner._streams
    # a head over the server's field count (the twin answers 431), a body to come
    owner._server._max_fields = 1
    sid = send("/y", (("a", "1"), ("b", "2")))
    assert owner.calls[-1][:2] == ("request", sid)
    owner._server._max_fields = 100
    sid = send("/z", end=False)
    assert owner.calls[-1][:2] == ("request", sid) and owner.calls[-1][4] is False
    assert owner.requests == 2  # only the two the compiled path took

    # answers with a body are submitted by the compiled path itself (no _respond): HEADERS
    # from the compiled response_fields, then the bytes or the file range
    answers: dict[int, Any] = {}
    for path in ("/bytes", "/file"):
        sid = send(path)
        assert owner.calls[-1][0] != "respond"
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived):
                answers[ev.stream_id] = dict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                answers[ev.stream_id] = (answers[ev.stream_id], ev.data)
    os.close(fd)
    heads = list(answers.values())
    assert heads[0][0][b":status"] == b"200" and heads[0][0][b"x-a"] == b"1"
    assert heads[0][0][b"content-length"] == b"5" and heads[0][1] == b"hello"
    assert heads[1][0][b":status"] == b"206" and heads[1][1] == Path(__file__).read_bytes()[2:7]
    # and, their END_STREAM out, ended there too: the stream let go, the file released
    assert sid not in owner._streams and released == [fd]
    assert not any(call[0] == "sent_end" for call in owner.calls)


def _h2ng_key(client: Any, path: str) -> bytes:
    head = [(b":method", b"GET"), (b":path", path.encode()), (b":scheme", b"https"),
            (b":authority", b"a.test:8443")]  # fmt: skip
    key = request_key(head)
    assert key is not None
    return key
