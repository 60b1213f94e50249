"""RabbitMQ's side of the channel interface: :class:`Channel`, :class:`Consumer`, :class:`Message`.

What :mod:`kiwi_anyio.channel` promises, over the sans-I/O core: requests go into the core's
send buffer and wake the connection's writer; the connection's reader calls the ``_on_*``
methods with the events it parsed (replies, deliveries, confirms, returns, cancellations,
closes), which resolve waiters and fill the per-consumer streams. The reader never runs user
code and never waits here.

Owns: the per-channel state (pending synchronous requests and their reply slots, consumers,
publisher confirms and returns) and the cancellation-safe waiting on replies. Must not touch:
the socket, the reader and writer tasks, heartbeats (:mod:`kiwi_anyio.protocol.client`), the
framing (the core's).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import TYPE_CHECKING, Any, Final, Self

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pamqp import commands
from pamqp.base import Frame

from .. import channel as interface
from .._signal import new_signal
from ..channel import Acknowledgement, Body, FieldTable, OnConfirm, Props
from ..exceptions import (
    AMQPError,
    ChannelClosed,
    ConsumerCancelled,
    MessageReturned,
    PublishNacked,
    UndecodableContent,
)
from . import _methods as methods
from . import events as ev
from ._connection import ChannelState

if TYPE_CHECKING:
    from collections.abc import Callable

    from .client import Connection

__all__ = ["Channel", "Consumer", "Message"]

# the records keep the name they always had
logger = logging.getLogger("kiwi_anyio.protocol.client")

Properties = commands.Basic.Properties

WRITE_HIGH_WATER: Final = 4 * 1024 * 1024  # publishers wait while more than this is unsent
CLOSE_TIMEOUT: Final = 5.0
# A consumer hands out at most this many buffered messages between two checkpoints.
CHECKPOINT_EVERY: Final = 64


class _Slot:
    """A one-shot result for a request the reader answers."""

    __slots__ = ("abandoned", "error", "event", "no_ack", "value")

    def __init__(self) -> None:
        self.event = new_signal()
        self.value: Any = None
        self.error: BaseException | None = None
        self.abandoned = False
        self.no_ack = False  # a basic_get(no_ack=True): its message cannot be given back

    @property
    def answered(self) -> bool:
        """True if the reply was taken as wanted (set, not failed): a cancelled waiter that
        lost this race must undo what the reply did."""
        return self.event.is_set() and self.error is None and not self.abandoned

    def set(self, value: Any) -> None:
        self.value = value
        self.event.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.event.set()

    async def wait(self) -> Any:
        try:
            await self.event.wait()
        except BaseException:
            if not self.event.is_set():  # else the reply came first: see ``answered``
                self.abandoned = True
            raise
        if self.error is not None:
            raise self.error
        return self.value


class _CallbackSlot:
    """A confirm slot that calls back (in the reader) instead of waking a task."""

    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[BaseException | None], object]) -> None:
        self.callback = callback

    def set(self, value: Any) -> None:
        self._call(None)

    def fail(self, error: BaseException) -> None:
        self._call(error)

    def _call(self, error: BaseException | None) -> None:
        try:
            self.callback(error)
        except Exception:  # it must not take the reader down
            logger.exception("publish confirm callback %r raised", self.callback)


class Message(interface.Message):
    """A message from RabbitMQ (see :class:`kiwi_anyio.channel.Message`)."""

    __slots__ = ("_channel",)

    def __init__(
        self,
        channel: Channel,
        event: ev.Delivery | ev.GetOk,
        no_ack: bool,
    ) -> None:
        self._channel = channel
        self.body = event.body
        self.properties = event.properties
        self.delivery_tag = event.delivery_tag
        self.redelivered = event.redelivered
        self.exchange = event.exchange
        self.routing_key = event.routing_key
        self.consumer_tag = event.consumer_tag if isinstance(event, ev.Delivery) else None
        self.message_count = event.message_count if isinstance(event, ev.GetOk) else None
        self.no_ack = no_ack
        self._settled = no_ack

    @property
    def channel(self) -> Channel:
        return self._channel

    def ack(self) -> None:
        channel = self._channel
        channel._check()
        self._settle()
        # basic_ack() without its second _check(): nothing ran since the first
        channel._core.ack(channel.number, self.delivery_tag)
        channel._connection._wake_writer()


class Consumer(interface.Consumer["Message"]):
    """A consumer on RabbitMQ (see :class:`kiwi_anyio.channel.Consumer`)."""

    def __init__(self, channel: Channel, queue: str, no_ack: bool, kwargs: dict[str, Any]) -> None:
        self._channel = channel
        self.queue = queue
        self.no_ack = no_ack
        self._kwargs = kwargs
        self.consumer_tag = ""
        self._send: MemoryObjectSendStream[Message]
        self._receive: MemoryObjectReceiveStream[Message]
        self._send, self._receive = anyio.create_memory_object_stream[Message](math.inf)
        self._error: BaseException | None = None
        self._started = False
        self._cancelled = False
        self._unchecked = 0  # messages handed out since the last checkpoint

    async def start(self) -> Self:
        ch = self._channel
        try:
            reply = await ch._call(
                methods.Basic.Consume(queue=self.queue, no_ack=self.no_ack, **self._kwargs),
                register=self,
            )
        except BaseException:
            self._send.close()  # __aexit__ will not run: nothing else closes the streams
            if not self.no_ack:  # a ConsumeOk that raced with the cancellation brought some
                for message in interface.drain(self._receive):
                    if not message._settled and ch.is_open:
                        message.reject(requeue=True)
            self._receive.close()
            raise
        assert isinstance(reply, commands.Basic.ConsumeOk)
        self.consumer_tag = reply.consumer_tag or ""
        self._started = True
        return self

    async def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        ch = self._channel
        tag = self.consumer_tag
        with anyio.CancelScope(shield=True), anyio.move_on_after(_close_wait(ch._connection)):
            # Not registered: the broker cancelled it, or the channel closed, first.
            # Until CancelOk, deliveries still come into this consumer's stream: rejected
            # before the broker saw Basic.Cancel, they would be redelivered here, again and
            # again (each time a delivery attempt, for x-delivery-limit).
            if tag in ch._consumers and ch.is_open:
                try:
                    await ch._call(commands.Basic.Cancel(consumer_tag=tag))
                except AMQPError:
                    pass
        ch._consumers.pop(tag, None)
        self._send.close()
        if not self.no_ack:
            for message in interface.drain(self._receive):
                if not message._settled and ch.is_open:
                    message.reject(requeue=True)
        self._receive.close()

    def _deliver(self, message: Message) -> None:
        self._send.send_nowait(message)

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._send.close()

    async def __anext__(self) -> Message:
        # Messages already buffered are handed out without a trip through the event loop;
        # every CHECKPOINT_EVERY-th one still checkpoints, so the loop stays cancellable and
        # other tasks (the writer sending this batch's acks) get their turn.
        if self._unchecked < CHECKPOINT_EVERY:
            try:
                message = self._receive.receive_nowait()
            except anyio.WouldBlock:
                pass
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                raise self._end() from None
            else:
                self._unchecked += 1
                return message
        self._unchecked = 0
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise self._end() from None

    def _end(self) -> BaseException:
        return self._error if self._error is not None else StopAsyncIteration()


def _close_wait(connection: Connection) -> float:
    """How long to wait for CancelOk/CloseOk: not at all while the broker reads nothing."""
    return 0 if connection.is_blocked else CLOSE_TIMEOUT


class Channel(interface.Channel["Message", "Consumer"]):
    """A channel on RabbitMQ (see :class:`kiwi_anyio.channel.Channel`)."""

    def __init__(self, connection: Connection, number: int, publisher_confirms: bool) -> None:
        self._connection = connection
        self._core = connection._core
        self.number = number
        self.publisher_confirms = publisher_confirms
        self._waiters: deque[_Slot] = deque()
        self._pending_consumers: deque[Consumer | None] = deque()
        self._consumers: dict[str, Consumer] = {}
        # no_ack consumers until their CancelOk: a late delivery to one is dropped, as
        # rejecting an unknown delivery tag would make the broker close the channel (406)
        self._no_ack_tags: set[str] = set()
        self._confirms: dict[int, _Slot | _CallbackSlot] = {}
        self._returned: dict[int, MessageReturned] = {}
        self._closed: ChannelClosed | None = None
        self._closed_event = anyio.Event()

    def __repr__(self) -> str:
        return f"<Channel {self.number} of {self._connection}>"

    @property
    def is_open(self) -> bool:
        # the core's state too: a Channel.Close parsed in this read is dispatched (and
        # marks us closed) only after the events before it, whose handlers ask this
        return (
            self._closed is None
            and self._connection.is_open
            and self._core.channel_state(self.number) is ChannelState.OPEN
        )

    def _check(self) -> None:
        if self._closed is not None:
            raise self._closed
        self._connection._check()

    # ------------------------------------------------------------ the reader's side

    def _on_closed(self, error: ChannelClosed) -> None:
        if self._closed is None:
            self._closed = error
        for slot in self._waiters:
            slot.fail(error)
        self._waiters.clear()
        for confirm in list(self._confirms.values()):
            confirm.fail(error)
        self._confirms.clear()
        for consumer in self._consumers.values():
            consumer._fail(error)
        self._consumers.clear()
        self._pending_consumers.clear()
        self._closed_event.set()

    def _on_reply(self, value: Any) -> None:
        slot = self._waiters.popleft()
        consumer = self._pending_consumers.popleft()
        if isinstance(value, commands.Basic.ConsumeOk) and consumer is not None:
            if consumer.no_ack:
                self._no_ack_tags.add(value.consumer_tag or "")
            if slot.abandoned:  # nobody will iterate: cancel it again
                self._cancel_abandoned(value.consumer_tag or "")
            else:
                self._consumers[value.consumer_tag or ""] = consumer
        elif isinstance(value, commands.Basic.CancelOk):
            self._no_ack_tags.discard(value.consumer_tag or "")
        if isinstance(value, ev.UndecodableDelivery):
            slot.fail(UndecodableContent(f"basic_get: {value.error}"))
        elif not slot.abandoned:
            slot.set(value)
        else:
            slot.event.set()  # nobody reads it, but requests queued behind it go on
            if isinstance(value, ev.GetOk) and not slot.no_ack:
                self._give_back(value)  # an abandoned basic_get

    def _cancel_abandoned(self, consumer_tag: str) -> None:
        """Cancel a consumer nobody iterates; its CancelOk is waited for by nobody."""
        self._core.send_method(self.number, commands.Basic.Cancel(consumer_tag=consumer_tag))
        slot = _Slot()
        slot.abandoned = True
        self._waiters.append(slot)
        self._pending_consumers.append(None)
        self._connection._wake_writer()

    def _give_back(self, reply: ev.GetOk) -> None:
        self._core.reject(self.number, reply.delivery_tag, requeue=True)
        self._connection._wake_writer()

    def _undo(self, slot: _Slot, consumer: Consumer | None) -> None:
        """A reply arrived and was taken as wanted, but its waiter was cancelled before it
        resumed (the cancellation came first): do what an abandoned request's reply does."""
        value = slot.value
        if not self.is_open or self._core.channel_state(self.number) is not ChannelState.OPEN:
            return
        if isinstance(value, commands.Basic.ConsumeOk) and consumer is not None:
            tag = value.consumer_tag or ""
            if self._consumers.get(tag) is consumer:
                del self._consumers[tag]
                self._cancel_abandoned(tag)
        elif isinstance(value, ev.GetOk) and not slot.no_ack:
            self._give_back(value)

    def _on_delivery(self, event: ev.Delivery) -> None:
        consumer = self._consumers.get(event.consumer_tag)
        if consumer is None:
            if event.consumer_tag not in self._no_ack_tags:
                self._core.reject(self.number, event.delivery_tag, requeue=True)
                self._connection._wake_writer()
            return
        consumer._deliver(Message(self, event, consumer.no_ack))

    def _on_confirm(self, event: ev.PublishConfirmed) -> None:
        confirms = self._confirms
        if event.multiple:
            tags = []
            for tag in confirms:
                if tag > event.delivery_tag:
                    break
                tags.append(tag)
        else:
            tags = [event.delivery_tag]
        for tag in tags:
            slot = confirms.pop(tag, None)
            returned = self._returned.pop(tag, None) if self._returned else None
            if slot is None:
                continue
            if returned is not None:
                slot.fail(returned)
            elif event.ack:
                slot.set(None)
            else:
                slot.fail(
                    PublishNacked(f"the broker nacked publish {tag} on channel {self.number}")
                )

    def _on_return(self, event: ev.Returned) -> None:
        if event.delivery_tag is not None and event.delivery_tag in self._confirms:
            self._returned[event.delivery_tag] = MessageReturned(
                event.reply_code, event.reply_text, event.exchange, event.routing_key
            )
        else:
            logger.warning(
                "%s: message to %r/%r returned: %s %s",
                self,
                event.exchange,
                event.routing_key,
                event.reply_code,
                event.reply_text,
            )

    def _on_consumer_cancelled(self, tag: str) -> None:
        self._no_ack_tags.discard(tag)
        consumer = self._consumers.pop(tag, None)
        if consumer is not None:
            consumer._fail(
                ConsumerCancelled(
                    0, f"the broker cancelled consumer {tag!r} of queue {consumer.queue!r}"
                )
            )

    # ------------------------------------------------------------ requests

    async def _call(self, method: Frame, *, register: Consumer | None = None) -> Any:
        self._check()
        # One synchronous request at a time (also after a cancelled wait: its reply is still
        # due). RabbitMQ does not keep pipelined replies in order: a queue process sends
        # ConsumeOk/CancelOk, which can come after the reply to a later Basic.Get.
        while self._waiters:
            await self._waiters[-1].event.wait()
            self._check()
        slot = _Slot()
        if isinstance(method, commands.Basic.Get):
            slot.no_ack = bool(method.no_ack)
        self._core.send_method(self.number, method)
        self._waiters.append(slot)
        self._pending_consumers.append(register)
        self._connection._wake_writer()
        try:
            return await slot.wait()
        except BaseException:
            if slot.answered:
                self._undo(slot, register)
            raise

    def _consumer(
        self, queue: str, no_ack: bool, exclusive: bool, consumer_tag: str, arguments: FieldTable
    ) -> Consumer:
        self._check()
        return Consumer(
            self,
            queue,
            no_ack,
            {"exclusive": exclusive, "consumer_tag": consumer_tag, "arguments": arguments},
        )

    async def _get(self, queue: str, no_ack: bool) -> Message | None:
        reply = await self._call(methods.Basic.Get(queue=queue, no_ack=no_ack))
        if isinstance(reply, ev.GetOk):
            return Message(self, reply, no_ack)
        return None

    async def basic_cancel(self, consumer_tag: str) -> None:
        consumer = self._consumers.get(consumer_tag)
        if consumer is not None:
            await consumer.cancel()
        else:
            await self._call(commands.Basic.Cancel(consumer_tag=consumer_tag))

    def _acknowledge(self, kind: Acknowledgement, tag: int, multiple: bool, requeue: bool) -> None:
        if kind == "ack":
            self._core.ack(self.number, tag, multiple=multiple)
        elif kind == "nack":
            self._core.nack(self.number, tag, multiple=multiple, requeue=requeue)
        else:
            self._core.reject(self.number, tag, requeue=requeue)
        self._connection._wake_writer()

    async def _publish(
        self, body: Body, exchange: str, key: str, props: Props, mandatory: bool
    ) -> None:
        connection = self._connection
        if connection._core.blocked or connection._core.bytes_to_send > WRITE_HIGH_WATER:
            await connection._wait_writable()
        tag = self._send_publish(body, exchange, key, props, mandatory)
        if tag is None:
            return
        slot = _Slot()
        self._confirms[tag] = slot
        try:
            await slot.wait()
        finally:
            if slot.abandoned:
                self._confirms.pop(tag, None)
                self._returned.pop(tag, None)

    def _publish_nowait(
        self, body: Body, exchange: str, key: str, props: Props, mandatory: bool, done: OnConfirm
    ) -> None:
        connection = self._connection
        if connection._core.blocked or connection._core.bytes_to_send > WRITE_HIGH_WATER:
            raise anyio.WouldBlock
        tag = self._send_publish(body, exchange, key, props, mandatory)
        if tag is None:
            done(None)
        else:
            self._confirms[tag] = _CallbackSlot(done)

    def _send_publish(
        self, body: Body, exchange: str, key: str, props: Props, mandatory: bool
    ) -> int | None:
        """Queue the message for the writer; its publish sequence number on a confirm channel."""
        self._check()
        if isinstance(body, bytearray | memoryview):
            body = bytes(body)  # a copy: what is sent is the body as it was at the call
        tag = self._core.publish(self.number, exchange, key, body, props, mandatory=mandatory)
        self._connection._wake_writer()
        return tag

    async def aclose(self) -> None:
        if self._closed is not None:
            return
        with anyio.CancelScope(shield=True):
            for consumer in list(self._consumers.values()):
                with anyio.move_on_after(CLOSE_TIMEOUT):
                    await consumer.cancel()
            if self._closed is None and self._connection._core.is_open:
                self._core.close_channel(self.number)
                self._connection._wake_writer()
                with anyio.move_on_after(_close_wait(self._connection)):
                    await self._closed_event.wait()
            self._on_closed(ChannelClosed(200, "channel closed by the client"))
