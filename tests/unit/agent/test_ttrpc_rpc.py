"""ttrpc Server and Client over real sockets: calls, streams, errors, limits, disconnects."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator

import pytest
from google.protobuf import wrappers_pb2 as w

from frakpy.agent.protocol import ttrpc, ttrpc_pb2

SVC = "test.Echo"


async def echo(req: w.BytesValue, call: ttrpc.ServerCall) -> w.BytesValue:
    return w.BytesValue(value=req.value)


async def slow_echo(req: w.StringValue, call: ttrpc.ServerCall) -> w.StringValue:
    await asyncio.sleep(random.random() / 50)
    return w.StringValue(value=req.value + "!")


async def big(req: w.UInt32Value, call: ttrpc.ServerCall) -> w.BytesValue:
    return w.BytesValue(value=b"b" * req.value)


async def boom(req: w.StringValue, call: ttrpc.ServerCall) -> w.StringValue:
    raise ValueError(f"cannot handle {req.value}")


async def refuse(req: w.StringValue, call: ttrpc.ServerCall) -> w.StringValue:
    raise ttrpc.TTRPCError(ttrpc.Code.NOT_FOUND, f"no such thing: {req.value}")


class Sleeper:
    def __init__(self) -> None:
        self.cancelled = asyncio.Event()

    async def __call__(self, req: w.DoubleValue, call: ttrpc.ServerCall) -> w.DoubleValue:
        try:
            await asyncio.sleep(req.value)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return req


async def count(req: w.UInt32Value, call: ttrpc.ServerCall) -> AsyncIterator[w.UInt32Value]:
    for i in range(req.value):
        if i % 3 == 0:
            await asyncio.sleep(0)
        yield w.UInt32Value(value=i)


async def count_then_fail(req: w.UInt32Value, call: ttrpc.ServerCall) -> AsyncIterator[w.UInt32Value]:
    for i in range(req.value):
        yield w.UInt32Value(value=i)
    raise ttrpc.TTRPCError(ttrpc.Code.ABORTED, "stream broke")


async def add_up(req: w.StringValue, call: ttrpc.ServerCall) -> w.Int64Value:
    total = 0
    while (msg := await call.recv()) is not None:
        total += msg.value
    return w.Int64Value(value=total)


def make_server(max_message_size: int = ttrpc.DEFAULT_MAX_MESSAGE_SIZE) -> tuple[ttrpc.Server, Sleeper]:
    server = ttrpc.Server(max_message_size=max_message_size)
    sleeper = Sleeper()
    server.register(SVC, {
        "Echo": ttrpc.Method(echo, w.BytesValue),
        "SlowEcho": ttrpc.Method(slow_echo, w.StringValue),
        "Boom": ttrpc.Method(boom, w.StringValue),
        "Big": ttrpc.Method(big, w.UInt32Value),
        "Refuse": ttrpc.Method(refuse, w.StringValue),
        "Sleep": ttrpc.Method(sleeper, w.DoubleValue),
        "Count": ttrpc.Method(count, w.UInt32Value, server_streaming=True),
        "CountThenFail": ttrpc.Method(count_then_fail, w.UInt32Value, server_streaming=True),
        "AddUp": ttrpc.Method(add_up, w.StringValue, client_streaming=True, data_type=w.Int64Value),
    })
    return server, sleeper


async def socketpair_streams() -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter],
                                        tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    a, b = socket.socketpair()
    return await asyncio.open_connection(sock=a), await asyncio.open_connection(sock=b)


class Pair:
    """A server serving one end of a socketpair and a client on the other."""

    def __init__(self, max_server: int = ttrpc.DEFAULT_MAX_MESSAGE_SIZE,
                 max_client: int = ttrpc.DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.max_server, self.max_client = max_server, max_client

    async def __aenter__(self) -> Pair:
        (sr, sw), (cr, cw) = await socketpair_streams()
        self.server, self.sleeper = make_server(self.max_server)
        self.serve_task = asyncio.create_task(self.server.serve(sr, sw))
        self.client = ttrpc.Client(cr, cw, max_message_size=self.max_client)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        await asyncio.wait_for(self.serve_task, 5)


async def test_unary_roundtrip() -> None:
    async with Pair() as p:
        resp = await p.client.call(SVC, "Echo", w.BytesValue(value=b"hi"), w.BytesValue, timeout=5)
        assert resp.value == b"hi"


async def test_many_concurrent_calls_interleave() -> None:
    async with Pair() as p:
        results = await asyncio.gather(*(
            p.client.call(SVC, "SlowEcho", w.StringValue(value=str(i)), w.StringValue, timeout=10)
            for i in range(300)))
        assert [r.value for r in results] == [f"{i}!" for i in range(300)]
        assert p.client._calls == {}


async def test_concurrent_streams_and_unary_calls() -> None:
    async with Pair() as p:
        async def collect(n: int) -> list[int]:
            return [m.value async for m in await p.client.stream(SVC, "Count", w.UInt32Value(value=n),
                                                                    w.UInt32Value, timeout=10)]

        streams = [collect(n) for n in (0, 1, 17, 50, 200)]
        unaries = [p.client.call(SVC, "SlowEcho", w.StringValue(value="u"), w.StringValue) for _ in range(20)]
        results = await asyncio.gather(*streams, *unaries)
        assert results[:5] == [list(range(n)) for n in (0, 1, 17, 50, 200)]
        assert all(r.value == "u!" for r in results[5:])


async def test_server_stream_error_after_data() -> None:
    async with Pair() as p:
        got = []
        with pytest.raises(ttrpc.TTRPCError) as exc:
            async for m in await p.client.stream(SVC, "CountThenFail", w.UInt32Value(value=4), w.UInt32Value):
                got.append(m.value)
        assert got == [0, 1, 2, 3]
        assert exc.value.code == ttrpc.Code.ABORTED and exc.value.message == "stream broke"


async def test_client_streaming_data_frames() -> None:
    async with Pair() as p:
        stream = await p.client.stream(SVC, "AddUp", w.StringValue(), w.Int64Value, client_streaming=True)
        for i in range(10):
            await stream.send(w.Int64Value(value=i))
        await stream.close_send()
        assert [m.value async for m in stream] == [45]


async def test_unknown_service_and_method_are_unimplemented() -> None:
    async with Pair() as p:
        for service, method in (("nope.Svc", "Echo"), (SVC, "Nope")):
            with pytest.raises(ttrpc.TTRPCError) as exc:
                await p.client.call(service, method, w.StringValue(), w.StringValue, timeout=5)
            assert exc.value.code == ttrpc.Code.UNIMPLEMENTED
            assert (service if service != SVC else method) in exc.value.message


async def test_handler_exception_becomes_unknown_with_message() -> None:
    async with Pair() as p:
        with pytest.raises(ttrpc.TTRPCError) as exc:
            await p.client.call(SVC, "Boom", w.StringValue(value="this"), w.StringValue, timeout=5)
        assert exc.value.code == ttrpc.Code.UNKNOWN
        assert "ValueError: cannot handle this" in exc.value.message
        # the connection is still fine
        assert (await p.client.call(SVC, "Echo", w.BytesValue(value=b"x"), w.BytesValue)).value == b"x"


async def test_handler_chooses_status_code() -> None:
    async with Pair() as p:
        with pytest.raises(ttrpc.TTRPCError) as exc:
            await p.client.call(SVC, "Refuse", w.StringValue(value="x"), w.StringValue)
        assert exc.value.code == ttrpc.Code.NOT_FOUND and str(exc.value) == "NOT_FOUND: no such thing: x"


async def test_client_timeout_is_deadline_exceeded_and_server_cancels_handler() -> None:
    async with Pair() as p:
        with pytest.raises(ttrpc.TTRPCError) as exc:
            await p.client.call(SVC, "Sleep", w.DoubleValue(value=30), w.DoubleValue, timeout=0.1)
        assert exc.value.code == ttrpc.Code.DEADLINE_EXCEEDED
        # timeout_nano travelled with the request: the server gave up too
        await asyncio.wait_for(p.sleeper.cancelled.wait(), 5)
        assert p.client._calls == {}


async def test_large_messages_near_the_limit() -> None:
    async with Pair() as p:
        payload = random.randbytes(ttrpc.DEFAULT_MAX_MESSAGE_SIZE - 64)
        resp = await p.client.call(SVC, "Echo", w.BytesValue(value=payload), w.BytesValue, timeout=30)
        assert resp.value == payload


async def test_oversized_request_rejected_and_connection_survives() -> None:
    async with Pair(max_server=10_000, max_client=1 << 20) as p:
        with pytest.raises(ttrpc.TTRPCError) as exc:
            await p.client.call(SVC, "Echo", w.BytesValue(value=b"z" * 50_000), w.BytesValue, timeout=5)
        assert exc.value.code == ttrpc.Code.RESOURCE_EXHAUSTED
        assert "exceeds the maximum message size of 10000" in exc.value.message
        resp = await p.client.call(SVC, "Echo", w.BytesValue(value=b"z" * 9000), w.BytesValue, timeout=5)
        assert len(resp.value) == 9000


async def test_oversized_reply_fails_only_that_call() -> None:
    async with Pair(max_server=1 << 20, max_client=10_000) as p:
        # the client refuses to even send something above its own limit
        with pytest.raises(ttrpc.TTRPCError) as exc:
            await p.client.call(SVC, "Echo", w.BytesValue(value=b"q" * 20_000), w.BytesValue)
        assert exc.value.code == ttrpc.Code.RESOURCE_EXHAUSTED
        # a reply above the client's limit is skipped and fails just that call
        small = p.client.call(SVC, "Echo", w.BytesValue(value=b"s"), w.BytesValue, timeout=5)
        big = p.client.call(SVC, "Big", w.UInt32Value(value=50_000), w.BytesValue, timeout=5)
        res = await asyncio.gather(small, big, return_exceptions=True)
        assert res[0].value == b"s"
        assert isinstance(res[1], ttrpc.TTRPCError) and res[1].code == ttrpc.Code.RESOURCE_EXHAUSTED
        assert (await p.client.call(SVC, "Big", w.UInt32Value(value=9000), w.BytesValue)).value == b"b" * 9000


async def test_server_rejects_even_and_reused_stream_ids() -> None:
    (sr, sw), (cr, cw) = await socketpair_streams()
    server, _ = make_server()
    task = asyncio.create_task(server.serve(sr, sw))
    req = ttrpc_pb2.Request(service=SVC, method="Echo", payload=w.BytesValue(value=b"a").SerializeToString())
    body = req.SerializeToString()
    cw.write(ttrpc.encode_frame(2, ttrpc.MSG_REQUEST, 0, body))
    cw.write(ttrpc.encode_frame(5, ttrpc.MSG_REQUEST, 0, body))
    cw.write(ttrpc.encode_frame(3, ttrpc.MSG_REQUEST, 0, body))
    await cw.drain()
    decoder = ttrpc.FrameDecoder()
    frames: dict[int, ttrpc.Frame] = {}
    while len(frames) < 3:
        for f in decoder.feed(await asyncio.wait_for(cr.read(4096), 5)):
            frames[f.stream_id] = f
    codes = {sid: ttrpc_pb2.Response.FromString(f.payload).status.code for sid, f in frames.items()}
    assert codes == {2: ttrpc.Code.INVALID_ARGUMENT, 5: 0, 3: ttrpc.Code.INVALID_ARGUMENT}
    cw.close()
    await asyncio.wait_for(task, 5)


async def test_server_handles_one_byte_writes() -> None:
    (sr, sw), (cr, cw) = await socketpair_streams()
    server, _ = make_server()
    task = asyncio.create_task(server.serve(sr, sw))
    data = b""
    for sid in (1, 3):
        req = ttrpc_pb2.Request(service=SVC, method="Echo",
                                payload=w.BytesValue(value=b"frag%d" % sid).SerializeToString())
        data += ttrpc.encode_frame(sid, ttrpc.MSG_REQUEST, 0, req.SerializeToString())
    for i in range(len(data)):
        cw.write(data[i:i + 1])
        await cw.drain()
        await asyncio.sleep(0)
    decoder = ttrpc.FrameDecoder()
    frames: list[ttrpc.Frame] = []
    while len(frames) < 2:
        frames += decoder.feed(await asyncio.wait_for(cr.read(1), 5))  # and read them back bytewise
    values = sorted(w.BytesValue.FromString(ttrpc_pb2.Response.FromString(f.payload).payload).value
                    for f in frames)
    assert values == [b"frag1", b"frag3"]
    cw.close()
    await asyncio.wait_for(task, 5)


async def test_peer_disconnect_mid_frame_fails_all_pending_calls() -> None:
    (sr, sw), (cr, cw) = await socketpair_streams()
    client = ttrpc.Client(cr, cw)
    pending = [asyncio.create_task(client.call(SVC, "Echo", w.BytesValue(value=b"%d" % i), w.BytesValue,
                                               timeout=30)) for i in range(5)]
    await asyncio.sleep(0.05)
    # a "server" that answers with half a frame and dies
    sw.write(ttrpc.encode_frame(1, ttrpc.MSG_RESPONSE, 0, b"\x12\x05hello")[:13])
    await sw.drain()
    sw.close()
    for task in pending:
        with pytest.raises(ttrpc.ConnectionLost) as exc:
            await asyncio.wait_for(task, 5)
        assert exc.value.code == ttrpc.Code.UNAVAILABLE
        assert "middle of a frame" in exc.value.message
    assert client.closed
    with pytest.raises(ttrpc.ConnectionLost):
        await client.call(SVC, "Echo", w.BytesValue(), w.BytesValue)
    await client.close()


async def test_server_survives_client_dying_mid_frame(tmp_path) -> None:  # type: ignore[no-untyped-def]
    server, sleeper = make_server()
    path = str(tmp_path / "s.sock")
    listener = await asyncio.start_unix_server(server.serve, path=path)
    try:
        # client 1 starts a long call, then sends half a frame and vanishes
        r1, w1 = await asyncio.open_unix_connection(path)
        c1 = ttrpc.Client(r1, w1)
        slow = asyncio.create_task(c1.call(SVC, "Sleep", w.DoubleValue(value=30), w.DoubleValue))
        await asyncio.sleep(0.05)
        w1.write(ttrpc.encode_frame(3, ttrpc.MSG_REQUEST, 0, b"\x0a\x05hello")[:12])
        await w1.drain()
        w1.transport.abort()
        with pytest.raises(ttrpc.ConnectionLost):
            await asyncio.wait_for(slow, 5)
        await asyncio.wait_for(sleeper.cancelled.wait(), 5)  # in-flight work of the dead session dropped
        for _ in range(100):
            if server.active_connections == 0:
                break
            await asyncio.sleep(0.01)
        assert server.active_connections == 0
        # the server keeps serving new connections
        r2, w2 = await asyncio.open_unix_connection(path)
        c2 = ttrpc.Client(r2, w2)
        assert (await c2.call(SVC, "Echo", w.BytesValue(value=b"ok"), w.BytesValue, timeout=5)).value == b"ok"
        await c2.close()
        await c1.close()
    finally:
        listener.close()
        await listener.wait_closed()


async def test_metadata_reaches_the_handler() -> None:
    seen = {}

    async def meta(req: w.StringValue, call: ttrpc.ServerCall) -> w.StringValue:
        seen.update(call.metadata)
        seen["timeout"] = call.timeout
        return req

    (sr, sw), (cr, cw) = await socketpair_streams()
    server = ttrpc.Server()
    server.register(SVC, {"Meta": ttrpc.Method(meta, w.StringValue)})
    task = asyncio.create_task(server.serve(sr, sw))
    client = ttrpc.Client(cr, cw)
    await client.call(SVC, "Meta", w.StringValue(), w.StringValue, timeout=2.5,
                      metadata={"a": "1", "b": ["2", "3"]})
    assert seen == {"a": ["1"], "b": ["2", "3"], "timeout": 2.5}
    await client.close()
    await asyncio.wait_for(task, 5)


async def test_after_reply_runs_once_the_reply_is_out() -> None:
    order = []

    async def bye(req: w.StringValue, call: ttrpc.ServerCall) -> w.StringValue:
        call.after_reply(lambda: order.append("after"))
        order.append("handler")
        return req

    (sr, sw), (cr, cw) = await socketpair_streams()
    server = ttrpc.Server()
    server.register(SVC, {"Bye": ttrpc.Method(bye, w.StringValue)})
    task = asyncio.create_task(server.serve(sr, sw))
    client = ttrpc.Client(cr, cw)
    await client.call(SVC, "Bye", w.StringValue(), w.StringValue, timeout=5)
    order.append("client got reply")
    await asyncio.sleep(0.01)
    assert order[0] == "handler" and set(order[1:]) == {"after", "client got reply"}
    await client.close()
    await asyncio.wait_for(task, 5)
