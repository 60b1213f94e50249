"""In-process per-message costs: the pamqp codec floor and kiwi_anyio's sans-I/O core.

``python benchmarks/codec_floor.py [--quick]`` prints one ``RESULT {json}`` line (µs per
message, best of several repeats) with:

* the **pamqp codec floor** every pure-Python client built on pamqp pays, whatever its design:

  - ``publish``: build and marshal ``Basic.Publish`` + content header + 100-byte body, plus
    unmarshal one ``Basic.Ack`` (its confirm);
  - ``consume``: unmarshal ``Basic.Deliver`` + content header (+ the body slice), plus build
    and marshal one ``Basic.Ack``;

  each for the properties of workload 1 (``delivery_mode=2``) and for those the communicator
  sends with a task (content type, delivery mode, correlation id, reply-to, message id);
* **kiwi_anyio's sans-I/O core** (:class:`~kiwi_anyio.protocol.AMQPConnection`) doing the
  same per message with no socket and no event loop: ``publish()`` + ``data_to_send()`` +
  ``receive_data()`` of its confirm, and ``receive_data()`` of a delivery + ``ack()``. Frames
  are fed 100 to a ``receive_data`` call, as a socket read would bring them.

The difference between the full client's CPU per message (workload 1) and the core's is the
cost of the anyio driver: tasks, events, streams and the reader/writer loops.
"""

from __future__ import annotations

import sys
import timeit
import uuid
from collections.abc import Callable
from typing import Any

from bench_common import emit
from pamqp import body as pamqp_body
from pamqp import commands, frame, header

from kiwi_anyio.protocol import AMQPConnection, events

Properties = commands.Basic.Properties
BODY = (b"0123456789abcdef" * 7)[:100]
BATCH = 100


def _props(kind: str) -> Properties:
    if kind == "minimal":
        return Properties(delivery_mode=2)
    return Properties(
        content_type="application/json",
        delivery_mode=2,
        correlation_id=str(uuid.uuid4()),
        reply_to=f"kiwipy.messages-reply-{uuid.uuid4()}",
        message_id=uuid.uuid4().hex,
    )


def _best(fn: Callable[[], Any], per_call: int, repeat: int, seconds: float) -> float:
    """Best time of ``fn`` over ``repeat`` runs, in µs per message."""
    timer = timeit.Timer(fn)
    number, took = timer.autorange()
    number = max(1, int(number * seconds / max(took, 1e-9)))
    best = min(timer.repeat(repeat=repeat, number=number)) / number
    return best / per_call * 1e6


# ---------------------------------------------------------------- the pamqp floor


def _publish_floor(props: Properties) -> Callable[[], Any]:
    ack_frame = frame.marshal(commands.Basic.Ack(delivery_tag=1), 1)

    def once() -> Any:
        publish = commands.Basic.Publish(exchange="", routing_key="bench-queue")
        content = header.ContentHeader(weight=0, body_size=len(BODY), properties=props)
        data = b"".join(
            (
                frame.marshal(publish, 1),
                frame.marshal(content, 1),
                frame.marshal(pamqp_body.ContentBody(BODY), 1),
            )
        )
        frame.unmarshal(ack_frame)
        return data

    return once


def _deliver_frames(props: Properties, tag: int = 1) -> tuple[bytes, bytes, bytes]:
    deliver = commands.Basic.Deliver(
        consumer_tag="ctag1.0123456789abcdef",
        delivery_tag=tag,
        redelivered=False,
        exchange="",
        routing_key="bench-queue",
    )
    return (
        frame.marshal(deliver, 1),
        frame.marshal(header.ContentHeader(weight=0, body_size=len(BODY), properties=props), 1),
        frame.marshal(pamqp_body.ContentBody(BODY), 1),
    )


def _consume_floor(props: Properties) -> Callable[[], Any]:
    method_bytes, header_bytes, body_bytes = _deliver_frames(props)

    def once() -> Any:
        _, _, method = frame.unmarshal(method_bytes)
        _, _, content = frame.unmarshal(header_bytes)
        body = body_bytes[7:-1]  # what a client does instead of pamqp's body decode
        ack = frame.marshal(commands.Basic.Ack(delivery_tag=1), 1)
        return method, content, body, ack

    return once


# ---------------------------------------------------------------- kiwi_anyio's sans-I/O core


def _open_core() -> tuple[AMQPConnection, int]:
    core = AMQPConnection(heartbeat=0)
    core.initiate()
    core.data_to_send()
    start = commands.Connection.Start(
        server_properties={
            "product": "RabbitMQ",
            "capabilities": {"publisher_confirms": True, "basic.nack": True},
        },
        mechanisms="PLAIN",
        locales="en_US",
    )
    core.receive_data(frame.marshal(start, 0))
    core.receive_data(frame.marshal(commands.Connection.Tune(2047, 131072, 0), 0))
    core.receive_data(frame.marshal(commands.Connection.OpenOk(), 0))
    channel = core.open_channel()
    core.receive_data(frame.marshal(commands.Channel.OpenOk(), channel))
    core.send_method(channel, commands.Confirm.Select())
    core.receive_data(frame.marshal(commands.Confirm.SelectOk(), channel))
    core.send_method(channel, commands.Basic.Consume(queue="q", consumer_tag="ctag"))
    core.receive_data(frame.marshal(commands.Basic.ConsumeOk(consumer_tag="ctag"), channel))
    core.data_to_send()
    assert core.is_open
    return core, channel


def _core_publish(props: Properties) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """``(publish 100 + feed their 100 confirms, marshal 100 confirms)``.

    Marshalling the confirms is the broker's work: it is timed alone and subtracted.
    """
    core, channel = _open_core()

    def acks(tags: list[int | None]) -> bytes:
        return b"".join(
            frame.marshal(commands.Basic.Ack(delivery_tag=tag), channel)
            for tag in tags
            if tag is not None
        )

    def once() -> Any:
        tags = [core.publish(channel, "", "bench-queue", BODY, props) for _ in range(BATCH)]
        core.data_to_send()
        return core.receive_data(acks(tags))

    first = 1_000_000

    def acks_only() -> Any:
        return acks(list(range(first, first + BATCH)))

    return once, acks_only


def _core_consume(props: Properties) -> Callable[[], Any]:
    """Feed 100 deliveries in one ``receive_data`` call and ack each."""
    core, channel = _open_core()
    deliveries = b"".join(
        frame.marshal(
            commands.Basic.Deliver(
                consumer_tag="ctag",
                delivery_tag=tag,
                redelivered=False,
                exchange="",
                routing_key="bench-queue",
            ),
            channel,
        )
        + frame.marshal(
            header.ContentHeader(weight=0, body_size=len(BODY), properties=props), channel
        )
        + frame.marshal(pamqp_body.ContentBody(BODY), channel)
        for tag in range(1, BATCH + 1)
    )

    def once() -> Any:
        for event in core.receive_data(deliveries):
            assert isinstance(event, events.Delivery)
            core.ack(channel, event.delivery_tag)
        return core.data_to_send()

    return once


def measure(quick: bool = False) -> dict[str, Any]:
    repeat, seconds = (3, 0.1) if quick else (7, 0.3)
    out: dict[str, Any] = {}
    for kind in ("minimal", "communicator"):
        props = _props(kind)
        pub = _best(_publish_floor(props), 1, repeat, seconds)
        con = _best(_consume_floor(props), 1, repeat, seconds)
        core_pub_fn, acks_fn = _core_publish(props)
        core_pub = _best(core_pub_fn, BATCH, repeat, seconds)
        acks = _best(acks_fn, BATCH, repeat, seconds)
        core_con = _best(_core_consume(props), BATCH, repeat, seconds)
        out[f"{kind}_floor_publish_us"] = pub
        out[f"{kind}_floor_consume_us"] = con
        out[f"{kind}_core_publish_us"] = core_pub - acks
        out[f"{kind}_core_consume_us"] = core_con
    return out


def main(argv: list[str]) -> int:
    emit(measure(quick="--quick" in argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
