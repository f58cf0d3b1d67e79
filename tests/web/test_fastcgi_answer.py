"""The FastCGI answer path (meshkit.web.fastcgi.answer and the whole-reply hand-off of
Client.start): Pending runs the pipeline's callback in the same turn as the reply, and a reply
read whole gives the Reply the record Decoder's path gives (generated heads, both the
compiled quick_reply and its twin), HEAD and wrong Content-Lengths included."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshkit.web.fastcgi import connection as conn_mod
from meshkit.web.fastcgi import fast, records
from meshkit.web.fastcgi.answer import Answer, Pending
from meshkit.web.fastcgi.client import Client, FastCGIError, Reply, parse_endpoint
from meshkit.web.message import Headers, Response
from support.fastcgi import Responder, params, run


def test_pending_runs_its_first_callback_at_once() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut = Pending(loop=loop)
        seen: list[str] = []
        fut.add_done_callback(lambda f: seen.append("first"))
        fut.add_done_callback(lambda f: seen.append("second"))  # through asyncio
        fut.resolve(Response.text(200, "ok\n"))
        assert seen == ["first"]
        await asyncio.sleep(0)
        assert seen == ["first", "second"]
        fut.add_done_callback(lambda f: seen.append("late"))  # done: asyncio's way
        assert seen == ["first", "second"]
        await asyncio.sleep(0)
        assert seen[-1] == "late" and fut.result().status == 200
        fut.resolve(Response.text(500, "no\n"))  # a second answer is ignored
        assert fut.result().status == 200

    run(main())


def test_a_failing_callback_is_reported_not_raised() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx))
        fut = Pending(loop=loop)

        def boom(_f: Any) -> None:
            raise RuntimeError("writer broke")

        fut.add_done_callback(boom)
        fut.resolve(Response.text(200, "ok\n"))  # does not raise into the connection
        assert len(reported) == 1 and isinstance(reported[0]["exception"], RuntimeError)
        assert fut.result().status == 200

    run(main())


def test_a_cancelled_pending_drops_its_callback_and_answer() -> None:
    async def main() -> None:
        fut = Pending(loop=asyncio.get_running_loop())
        seen: list[bool] = []
        fut.add_done_callback(lambda f: seen.append(f.cancelled()))
        assert fut.cancel()
        Answer(fut, False)(Reply(200, Headers(), b"late"))  # the client went away
        fut.resolve(Response.text(200, "late\n"))
        await asyncio.sleep(0)
        assert seen == [] and fut.cancelled()

    run(main())


def test_answer_turns_errors_and_head_replies_into_responses() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut = Pending(loop=loop)
        Answer(fut, False)(FastCGIError(504, "slow"))
        assert fut.result().status == 504
        fut = Pending(loop=loop)
        Answer(fut, True)(Reply(200, Headers([("Content-Type", "text/plain")]), b""))
        # HEAD without the script's length: a stream, so no Content-Length: 0 is made up
        assert not isinstance(fut.result().body, bytes)
        fut = Pending(loop=loop)
        Answer(fut, False)(Reply(201, Headers([("X-A", "1")]), b"made"))
        got = fut.result()
        assert (got.status, got.headers.get("X-A"), got.body) == (201, "1", b"made")

    run(main())


_NAME = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(
    lambda n: n.lower() not in ("status", "location", "content-length")
)
_VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).map(str.strip)


@st.composite
def _replies(draw: Any) -> tuple[bytes, bool]:
    """A script's STDOUT (head and body) and whether the request is a HEAD."""
    body = draw(st.binary(max_size=200))
    lines = [f"{n}: {v}" for n, v in draw(st.lists(st.tuples(_NAME, _VALUE), max_size=5))]
    if draw(st.booleans()):
        lines.append(f"Status: {draw(st.integers(200, 599))} Whatever")
    if draw(st.booleans()):
        lines.append("Location: /elsewhere")
    length = draw(st.one_of(st.none(), st.just(len(body)), st.integers(0, 300)))
    if length is not None:
        lines.append(f"Content-Length: {length}")
    eol = draw(st.sampled_from(["\r\n", "\n"]))
    head = "".join(line + eol for line in lines) + eol
    return head.encode("latin-1") + body, draw(st.booleans())


async def _ask(stdout: bytes, head_only: bool) -> tuple[Any, ...]:
    async def behave(writer: asyncio.StreamWriter, p: dict[bytes, bytes]) -> bool:
        # one write: the reply comes whole (records.encode_stream cuts at 64 KiB)
        writer.write(
            records.encode_stream(records.STDOUT, 1, stdout)
            + records.end_request(1, 0, records.REQUEST_COMPLETE)
        )
        return True

    r = Responder(behave)
    client = Client([parse_endpoint(await r.start_tcp())])
    try:
        out: list[tuple[Any, ...]] = []
        for _ in range(2):  # the second one on the kept connection: Client.start's path
            fut: asyncio.Future[Reply | FastCGIError] = asyncio.get_running_loop().create_future()
            client.start(params(), head_only, fut.set_result)
            got = await asyncio.wait_for(fut, 5)
            if isinstance(got, FastCGIError):
                out.append(("error", got.status))
            else:
                assert isinstance(got.body, bytes)
                out.append((got.status, list(got.headers.items()), got.body))
        return tuple(out)
    finally:
        client.close()
        await r.stop()


@pytest.mark.parametrize("quick", ["compiled", "twin"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_replies())
def test_a_whole_reply_answers_as_the_decoder_path(quick: str, case: tuple[bytes, bool]) -> None:
    if quick == "compiled" and not fast.COMPILED:
        pytest.skip("the compiled record layer is not built")
    stdout, head_only = case
    fn = fast.quick_reply if quick == "compiled" else fast.quick_reply_py
    with pytest.MonkeyPatch.context() as m:
        m.setattr(conn_mod, "quick_reply", fn)
        whole: list[tuple[Any, ...]] = []
        asyncio.run(_record(stdout, head_only, whole))
        m.setattr(conn_mod, "quick_reply", lambda data: None)  # the Decoder's way
        decoded: list[tuple[Any, ...]] = []
        asyncio.run(_record(stdout, head_only, decoded))
    assert whole == decoded


async def _record(stdout: bytes, head_only: bool, into: list[tuple[Any, ...]]) -> None:
    into.append(await _ask(stdout, head_only))
