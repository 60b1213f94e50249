"""The anyio client against a misbehaving fake AMQP server (a small TCP server in the test).

At every step of the handshake the server may never answer, answer garbage, hang up, offer
nothing we can use or stall; the client must give up within ``connection_timeout`` with
:class:`ConnectionFailed` saying why. After the handshake, a server that breaks the protocol
gets ``Connection.Close`` with the right reply code and the ``async with`` raises
:class:`ProtocolError`; one that goes silent is caught by heartbeats.

Every test runs on asyncio and trio, inside ``anyio.fail_after``.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
from pamqp import commands, frame
from pamqp.base import Frame

from kiwi_anyio.exceptions import (
    AMQPError,
    ConnectionClosed,
    ConnectionFailed,
    HeartbeatTimeout,
    ProtocolError,
)
from kiwi_anyio.protocol import connect

from .fakes import (
    body_frame,
    deliver_bytes,
    header_frame,
    heartbeat_frame,
    method_frame,
    start_method,
)

pytestmark = pytest.mark.anyio

TIMEOUT = 20
CONNECT_TIMEOUT = 0.5  # seconds: ?connection_timeout=500


class Peer:
    """The server's side of one client connection."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.received: list[tuple[int, Any]] = []  # every frame the client sent

    async def _fill(self, size: int) -> bool:
        while len(self.buffer) < size:
            try:
                self.buffer += await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return False
        return True

    async def read_protocol_header(self) -> bytes:
        assert await self._fill(8)
        header, self.buffer = self.buffer[:8], self.buffer[8:]
        return header

    async def read_frame(self) -> tuple[int, Any] | None:
        """The next frame the client sent, or None when it hung up."""
        if not await self._fill(7):
            return None
        (size,) = struct.unpack_from(">I", self.buffer, 3)
        if not await self._fill(8 + size):
            return None
        data, self.buffer = self.buffer[: 8 + size], self.buffer[8 + size :]
        _, channel, obj = frame.unmarshal(data)
        self.received.append((channel, obj))
        return channel, obj

    async def expect(self, name: str) -> Any:
        """Read frames until the method ``name`` (heartbeats are skipped)."""
        while True:
            got = await self.read_frame()
            assert got is not None, f"the client hung up before {name}"
            if isinstance(got[1], Frame) and got[1].name == name:
                return got[1]

    async def send(self, *data: bytes) -> None:
        await self.stream.send(b"".join(data))

    async def method(self, channel: int, method: Frame) -> None:
        await self.send(method_frame(channel, method))

    async def handshake(self, *, heartbeat: int = 0) -> None:
        """A complete, well-behaved handshake."""
        assert await self.read_protocol_header() == b"AMQP\x00\x00\x09\x01"
        await self.method(0, start_method())
        await self.expect("Connection.StartOk")
        await self.method(0, commands.Connection.Tune(2047, 131072, heartbeat))
        await self.expect("Connection.Open")
        await self.method(0, commands.Connection.OpenOk())

    async def serve_channel(self) -> int:
        """Answer ``Channel.Open``; return the channel number."""
        while True:
            got = await self.read_frame()
            assert got is not None
            if isinstance(got[1], commands.Channel.Open):
                await self.method(got[0], commands.Channel.OpenOk())
                return got[0]

    async def silence(self) -> None:
        """Read (and drop) whatever comes, answer nothing, until the client hangs up."""
        while await self.read_frame() is not None:
            pass


Handler = Callable[[Peer], Awaitable[None]]


@asynccontextmanager
async def fake_server(handler: Handler) -> AsyncIterator[tuple[str, list[Peer]]]:
    """Serve ``handler`` on 127.0.0.1; yield a URL for it and the peers it served."""
    peers: list[Peer] = []

    async def serve(stream: anyio.abc.SocketStream) -> None:
        peer = Peer(stream)
        peers.append(peer)
        async with stream:
            try:
                await handler(peer)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    url = f"amqp://guest:guest@127.0.0.1:{port}/?connection_timeout={int(CONNECT_TIMEOUT * 1000)}"
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        try:
            yield url, peers
        finally:
            tg.cancel_scope.cancel()


async def refused(url: str) -> tuple[ConnectionFailed, float]:
    """Connect to ``url``; return the ConnectionFailed and how long it took."""
    start = anyio.current_time()
    with pytest.raises(ConnectionFailed) as info:
        async with connect(url):
            pytest.fail("the handshake with a broken server succeeded")
    return info.value, anyio.current_time() - start


# --------------------------------------------------------------------------- the handshake


async def _never_answers(peer: Peer) -> None:
    await peer.read_protocol_header()
    await anyio.sleep_forever()


async def _hangs_up_after_the_protocol_header(peer: Peer) -> None:
    await peer.read_protocol_header()


async def _http(peer: Peer) -> None:
    await peer.read_protocol_header()
    await peer.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    await anyio.sleep_forever()


async def _ssh_banner_first(peer: Peer) -> None:
    await peer.send(b"SSH-2.0-OpenSSH_9.6\r\n")
    await anyio.sleep_forever()


async def _amqp_1_0(peer: Peer) -> None:
    await peer.read_protocol_header()
    await peer.send(b"AMQP\x00\x01\x00\x00")
    await anyio.sleep_forever()


async def _half_a_frame(peer: Peer) -> None:
    await peer.read_protocol_header()
    await peer.send(method_frame(0, start_method())[:20])
    await anyio.sleep_forever()


async def _trickles(peer: Peer) -> None:
    # a valid Connection.Start, one byte every 50 ms: each read makes progress, the whole
    # takes minutes; the connection timeout bounds the attempt, not each read
    await peer.read_protocol_header()
    for byte in method_frame(0, start_method()):
        await peer.send(bytes([byte]))
        await anyio.sleep(0.05)


async def _huge_start(peer: Peer) -> None:
    await peer.read_protocol_header()
    await peer.method(0, start_method(server_properties={"padding": "x" * 10_000}))
    await anyio.sleep_forever()


async def _no_common_mechanism(peer: Peer) -> None:
    await peer.read_protocol_header()
    await peer.method(0, start_method(mechanisms="GSSAPI SCRAM-SHA-256"))
    await anyio.sleep_forever()


async def _wrong_version(peer: Peer) -> None:
    await peer.read_protocol_header()
    await peer.method(0, commands.Connection.Start(version_major=1, version_minor=0))
    await anyio.sleep_forever()


async def _stalls_after_start(peer: Peer) -> None:
    await peer.read_protocol_header()
    await peer.method(0, start_method())
    await peer.silence()


async def _hangs_up_after_start_ok(peer: Peer) -> None:
    await peer.read_protocol_header()
    await peer.method(0, start_method())
    await peer.expect("Connection.StartOk")


async def _stalls_after_tune(peer: Peer) -> None:
    await peer.read_protocol_header()
    await peer.method(0, start_method())
    await peer.expect("Connection.StartOk")
    await peer.method(0, commands.Connection.Tune(2047, 131072, 60))
    await peer.silence()


async def _garbage_after_tune(peer: Peer) -> None:
    await peer.read_protocol_header()
    await peer.method(0, start_method())
    await peer.expect("Connection.StartOk")
    await peer.method(0, commands.Connection.Tune(2047, 131072, 60))
    await peer.expect("Connection.Open")
    await peer.send(b"\x01\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x29\x00")  # OpenOk, bad end
    await peer.silence()


async def _hangs_up_after_open(peer: Peer) -> None:
    await peer.read_protocol_header()
    await peer.method(0, start_method())
    await peer.expect("Connection.StartOk")
    await peer.method(0, commands.Connection.Tune(2047, 131072, 60))
    await peer.expect("Connection.Open")


async def _deliver_before_open_ok(peer: Peer) -> None:
    await peer.read_protocol_header()
    await peer.method(0, start_method())
    await peer.expect("Connection.StartOk")
    await peer.method(0, commands.Connection.Tune(2047, 131072, 60))
    await peer.expect("Connection.Open")
    await peer.send(deliver_bytes(1, b"early"))
    await peer.silence()


async def _tls_alert(peer: Peer) -> None:
    # a TLS listener sent our plain protocol header: a fatal "unexpected_message" alert
    await peer.read_protocol_header()
    await peer.send(b"\x15\x03\x03\x00\x02\x02\x0a")
    await anyio.sleep_forever()


async def _tls_handshake_record(peer: Peer) -> None:
    await peer.read_protocol_header()
    await peer.send(b"\x16\x03\x01\x00\x31" + b"\x00" * 0x31)
    await anyio.sleep_forever()


HANDSHAKE_CASES: list[tuple[Handler, str]] = [
    (_never_answers, "timed out after 0.5 s"),
    (_hangs_up_after_the_protocol_header, "closed the connection before Connection.Start"),
    (_http, "exceeds frame_max 4096"),
    (_ssh_banner_first, "protocol error"),
    (_amqp_1_0, "does not speak AMQP 0-9-1"),
    (_half_a_frame, "timed out after 0.5 s"),
    (_trickles, "timed out after 0.5 s"),
    (_huge_start, "exceeds frame_max 4096"),
    (_no_common_mechanism, "none of ['PLAIN', 'AMQPLAIN', 'EXTERNAL'] is among them"),
    (_wrong_version, "unsupported AMQP version 1-0"),
    (_stalls_after_start, "timed out after 0.5 s"),
    (_hangs_up_after_start_ok, "wrong credentials or authentication mechanism"),
    (_stalls_after_tune, "timed out after 0.5 s"),
    (_garbage_after_tune, "bad frame-end octet"),
    (_hangs_up_after_open, "closed during the handshake"),
    (_deliver_before_open_ok, "protocol error"),
    (_tls_alert, "TLS alert record: is this a TLS port?"),
    (_tls_handshake_record, "TLS handshake record: is this a TLS port?"),
]


@pytest.mark.parametrize(
    ("handler", "says"), HANDSHAKE_CASES, ids=[h.__name__.strip("_") for h, _ in HANDSHAKE_CASES]
)
async def test_a_broken_handshake_fails_cleanly_and_in_time(handler: Handler, says: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with fake_server(handler) as (url, peers):
            error, elapsed = await refused(url)
            assert says in str(error), error
            assert "127.0.0.1" in str(error)
            assert "guest:guest" not in str(error)
            assert elapsed < CONNECT_TIMEOUT + 2, elapsed
            assert len(peers) == 1


async def test_amqps_to_a_plain_port_says_the_port_does_not_speak_tls() -> None:
    async def plain_amqp(peer: Peer) -> None:
        await peer.read_protocol_header()  # the first bytes of a ClientHello
        await peer.send(b"AMQP\x00\x00\x09\x01")  # what RabbitMQ answers, then it hangs up

    with anyio.fail_after(TIMEOUT):
        async with fake_server(plain_amqp) as (url, _):
            error, elapsed = await refused(url.replace("amqp://", "amqps://"))
            host_port = url.split("@")[1].split("/")[0]
            assert f"{host_port}: this port does not speak TLS" in str(error), error
            assert "WRONG_VERSION_NUMBER" in str(error)
            assert "guest:guest" not in str(error)
            assert elapsed < CONNECT_TIMEOUT + 2


async def test_the_timeout_covers_the_whole_attempt_per_host() -> None:
    # two silent hosts: each gets its own connection_timeout, and both are named
    with anyio.fail_after(TIMEOUT):
        async with (
            fake_server(_never_answers) as (one, _),
            fake_server(_stalls_after_tune) as (two, _),
        ):
            first = one.split("@")[1].split("/")[0]
            second = two.split("@")[1].split("/")[0]
            url = f"amqp://guest:guest@{first},{second}/?connection_timeout=500"
            error, elapsed = await refused(url)
            assert str(error).count("timed out after 0.5 s") == 2, error
            assert first in str(error) and second in str(error)
            assert elapsed < 2 * CONNECT_TIMEOUT + 2


async def test_the_client_tells_a_server_that_breaks_the_protocol() -> None:
    async def bad_tune(peer: Peer) -> None:
        await peer.read_protocol_header()
        await peer.method(0, start_method())
        await peer.expect("Connection.StartOk")
        await peer.send(method_frame(0, commands.Connection.OpenOk()))  # OpenOk before Tune
        await peer.silence()

    with anyio.fail_after(TIMEOUT):
        async with fake_server(bad_tune) as (url, peers):
            error, _ = await refused(url)
            assert "unexpected Connection.OpenOk" in str(error)
            await anyio.sleep(0.1)
            closes = [m for _, m in peers[0].received if isinstance(m, commands.Connection.Close)]
            assert [c.reply_code for c in closes] == [505]


# --------------------------------------------------------------------------- mid-stream


async def _run_until_failure(url: str, body: Callable[[Any], Awaitable[None]]) -> AMQPError:
    """Connect, run ``body(conn)``; return what the ``async with`` raised."""

    async def connected() -> None:
        async with connect(url) as conn:
            await body(conn)
            await anyio.sleep_forever()

    with pytest.raises(AMQPError) as info:
        await connected()
    return info.value


async def _idle(conn: Any) -> None:
    pass


@pytest.mark.parametrize(
    ("garbage", "code", "says"),
    [
        (b"\x01\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x29\xff", 501, "bad frame-end octet"),
        (struct.pack(">BHI", 3, 0, 10) + b"x" * 10 + b"\xce", 505, "content body on channel 0"),
        (struct.pack(">BHI", 1, 0, 4) + b"\x00\x0a\x00\x63\xce", 502, "undecodable method"),
        (struct.pack(">BHI", 3, 0, 2**31), 501, "exceeds frame_max"),
        (method_frame(0, start_method()), 505, "unexpected Connection.Start"),
        (deliver_bytes(7, b"x"), 504, "channel 7, which is not open"),
    ],
    ids=["frame-end", "body-on-0", "unknown-method", "huge-frame", "second-start", "channel"],
)
async def test_garbage_after_the_handshake(garbage: bytes, code: int, says: str) -> None:
    async def handler(peer: Peer) -> None:
        await peer.handshake()
        await anyio.sleep(0.05)
        await peer.send(garbage)
        await peer.silence()

    with anyio.fail_after(TIMEOUT):
        async with fake_server(handler) as (url, peers):
            error = await _run_until_failure(url, _idle)
            assert isinstance(error, ProtocolError), error
            assert error.reply_code == code and says in str(error)
            with anyio.fail_after(5):
                while not any(
                    isinstance(m, commands.Connection.Close) for _, m in peers[0].received
                ):
                    await anyio.sleep(0.01)
            close = peers[0].received[-1][1]
            assert isinstance(close, commands.Connection.Close)
            assert close.reply_code == code


async def test_a_server_hanging_up_mid_stream() -> None:
    async def handler(peer: Peer) -> None:
        await peer.handshake()
        await peer.serve_channel()

    async def body(conn: Any) -> None:
        async with conn.channel() as ch:
            await ch.queue_declare("q")  # never answered: the server hangs up

    with anyio.fail_after(TIMEOUT):
        async with fake_server(handler) as (url, _):
            error = await _run_until_failure(url, body)
            assert isinstance(error, ConnectionClosed), error
            assert "lost" in str(error)


async def test_a_silent_server_is_caught_by_heartbeats() -> None:
    async def handler(peer: Peer) -> None:
        await peer.handshake(heartbeat=1)
        await peer.silence()

    with anyio.fail_after(TIMEOUT):
        async with fake_server(handler) as (url, _):
            start = anyio.current_time()
            error = await _run_until_failure(url + "&heartbeat=1", _idle)
            assert isinstance(error, HeartbeatTimeout), error
            assert anyio.current_time() - start < 5


@pytest.mark.parametrize("after_header", ["heartbeats", "trickle", "nothing"])
async def test_a_corrupt_frame_size_is_caught_by_heartbeats(after_header: str) -> None:
    """Liveness counts complete frames, not bytes: a frame header announcing 131,064 bytes
    (within frame_max), then bytes that never complete it, is a dead peer, found within
    about two heartbeat intervals."""

    async def handler(peer: Peer) -> None:
        await peer.handshake(heartbeat=1)
        await peer.send(struct.pack(">BHI", 3, 0, 131072 - 8))  # a body frame, never ending
        with anyio.move_on_after(TIMEOUT):
            while True:
                if after_header == "heartbeats":  # a live peer's heartbeats, swallowed
                    await peer.send(heartbeat_frame())
                    await anyio.sleep(0.25)
                elif after_header == "trickle":
                    await peer.send(b"x")
                    await anyio.sleep(0.05)
                else:
                    await anyio.sleep(1)

    with anyio.fail_after(TIMEOUT):
        async with fake_server(handler) as (url, _):
            start = anyio.current_time()
            error = await _run_until_failure(url + "&heartbeat=1", _idle)
            elapsed = anyio.current_time() - start
            assert isinstance(error, HeartbeatTimeout), error
            assert "no complete frame" in str(error)
            assert elapsed < 4, elapsed


async def _consumer_server(peer: Peer, script: Callable[[Peer, int], Awaitable[None]]) -> None:
    """Handshake, a channel, answer Basic.Qos and Basic.Consume; then run ``script``."""
    await peer.handshake()
    channel = await peer.serve_channel()
    while True:
        got = await peer.read_frame()
        assert got is not None
        method = got[1]
        if isinstance(method, commands.Basic.Qos):
            await peer.method(channel, commands.Basic.QosOk())
        elif isinstance(method, commands.Basic.Consume):
            await peer.method(channel, commands.Basic.ConsumeOk(consumer_tag="ctag"))
            break
    await script(peer, channel)
    await peer.silence()


async def _consume_forever(conn: Any) -> None:
    async with conn.channel(prefetch_count=1) as ch, ch.basic_consume("q") as consumer:
        async for _ in consumer:
            pass  # never acked


async def test_a_server_ignoring_prefetch_is_refused() -> None:
    async def flood(peer: Peer, channel: int) -> None:
        # one more than the prefetch of 1 (more could be cut off by the client's reset)
        for tag in (1, 2):
            await peer.send(deliver_bytes(channel, b"m" * 1000, delivery_tag=tag))

    with anyio.fail_after(TIMEOUT):
        async with fake_server(lambda peer: _consumer_server(peer, flood)) as (url, peers):
            error = await _run_until_failure(url, _consume_forever)
            assert isinstance(error, ProtocolError) and error.reply_code == 505
            assert "prefetch limit is 1" in str(error)
            with anyio.fail_after(5):
                while not any(
                    isinstance(m, commands.Connection.Close) for _, m in peers[0].received
                ):
                    await anyio.sleep(0.01)
            close = peers[0].received[-1][1]
            assert isinstance(close, commands.Connection.Close) and close.reply_code == 505


async def test_deliveries_to_unknown_consumers_are_given_back() -> None:
    async def stray(peer: Peer, channel: int) -> None:
        await peer.send(deliver_bytes(channel, b"stray", delivery_tag=1, consumer_tag="other"))
        await peer.send(deliver_bytes(channel, b"mine", delivery_tag=2))

    got: list[bytes] = []

    async def body(conn: Any) -> None:
        async with conn.channel() as ch, ch.basic_consume("q", no_ack=True) as consumer:
            async for message in consumer:
                got.append(message.body)
                raise ConnectionClosed(0, "done")  # leave: the test has what it needs

    with anyio.fail_after(TIMEOUT):
        async with fake_server(lambda peer: _consumer_server(peer, stray)) as (url, peers):
            with pytest.raises(ConnectionClosed, match="done"):
                async with connect(url) as conn:
                    await body(conn)
            assert got == [b"mine"]
            rejects = [m for _, m in peers[0].received if isinstance(m, commands.Basic.Reject)]
            assert [(r.delivery_tag, r.requeue) for r in rejects] == [(1, True)]


async def test_an_oversized_delivery_is_rejected_and_consuming_goes_on() -> None:
    # Needs client.py to pass ConnectionParameters.max_message_size to AMQPConnection.
    async def oversized(peer: Peer, channel: int) -> None:
        await peer.send(
            deliver_bytes(channel, b"x" * 5000, delivery_tag=1, chunk=1000),
            deliver_bytes(channel, b"fits", delivery_tag=2),
        )

    got: list[bytes] = []

    async def body(conn: Any) -> None:
        async with conn.channel() as ch, ch.basic_consume("q") as consumer:
            async for message in consumer:
                got.append(message.body)
                message.ack()
                raise ConnectionClosed(0, "done")

    with anyio.fail_after(TIMEOUT):
        async with fake_server(lambda peer: _consumer_server(peer, oversized)) as (url, peers):
            with pytest.raises(ConnectionClosed, match="done"):
                async with connect(url + "&max_message_size=1000") as conn:
                    await body(conn)
            assert got == [b"fits"]
            settled = [
                (m.name, m.delivery_tag, getattr(m, "requeue", None))
                for _, m in peers[0].received
                if isinstance(m, commands.Basic.Reject | commands.Basic.Ack)
            ]
            assert settled[:2] == [("Basic.Reject", 1, False), ("Basic.Ack", 2, None)]


async def test_a_body_size_that_lies_then_silence() -> None:
    # the header promises 1 GiB, a little comes, then nothing: heartbeats end it, and the
    # client never tried to hold the promised gigabyte
    async def liar(peer: Peer, channel: int) -> None:
        await peer.send(
            method_frame(channel, commands.Basic.Deliver("ctag", 1, False, "", "q")),
            header_frame(channel, 2**30),
            body_frame(channel, b"a" * 1000),
        )

    async def handler(peer: Peer) -> None:
        await peer.handshake(heartbeat=1)
        channel = await peer.serve_channel()
        await peer.expect("Basic.Qos")
        await peer.method(channel, commands.Basic.QosOk())
        await peer.expect("Basic.Consume")
        await peer.method(channel, commands.Basic.ConsumeOk(consumer_tag="ctag"))
        await liar(peer, channel)
        await peer.silence()

    with anyio.fail_after(TIMEOUT):
        async with fake_server(handler) as (url, _):
            error = await _run_until_failure(url + "&heartbeat=1", _consume_forever)
            assert isinstance(error, HeartbeatTimeout), error


async def test_a_channel_the_broker_closes_in_the_same_read_is_already_closed() -> None:
    """A read holds a publish confirm on one channel, then the broker's ``Channel.Close`` of
    another: while the confirm is handled, the other channel already reports that it is
    not open (an ack sent on it after ``CloseOk`` would make RabbitMQ close the whole
    connection with 504)."""
    seen: dict[str, Any] = {}

    async def handler(peer: Peer) -> None:
        await peer.handshake()
        publisher = await peer.serve_channel()
        await peer.expect("Confirm.Select")
        await peer.method(publisher, commands.Confirm.SelectOk())
        other = await peer.serve_channel()
        await peer.expect("Basic.Publish")
        await peer.send(
            method_frame(publisher, commands.Basic.Ack(delivery_tag=1)),
            method_frame(
                other,
                commands.Channel.Close(406, "PRECONDITION_FAILED - delivery timed out", 0, 0),
            ),
        )
        await peer.expect("Channel.CloseOk")
        await peer.expect("Connection.Close")
        await peer.method(0, commands.Connection.CloseOk())

    with anyio.fail_after(TIMEOUT):
        async with fake_server(handler) as (url, _), connect(url) as conn:
            publisher = await conn.channel(publisher_confirms=True)
            other = await conn.channel()
            confirmed = anyio.Event()

            def on_confirm(error: BaseException | None) -> None:
                seen["error"] = error
                seen["other open"] = other.is_open
                confirmed.set()

            publisher.publish_nowait(b"x", routing_key="q", on_confirm=on_confirm)
            await confirmed.wait()
    assert seen == {"error": None, "other open": False}
