"""Confirmed publishing that survives a lost link and a nack.

:meth:`Publisher.publish` sends one message on the link's confirm channel and returns once the
broker confirmed it. A send not confirmed when the link dropped is sent again after the
recovery (for ``reconnect_timeout``: at least once, never zero times); one the broker nacked
is sent again on a fresh channel with backoff (for ``nack_retry_timeout``: a quorum queue
nacks while it elects a leader); an exchange found missing is declared again, once. Every
publish passes the link's publish hooks (:mod:`kiwi_anyio.hooks`) first, and their
``when_published`` callbacks hear how it ended (confirmed, or the error).

It owns the retired publisher channels. It must not know what it sends: bodies, properties
and routing come from the patterns.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Final

import anyio

from ..channel import Channel, Properties
from ..exceptions import (
    ChannelClosed,
    CommunicatorClosed,
    ConnectionClosed,
    DeliveryFailed,
    MessageReturned,
    PublishNacked,
)
from ..hooks import Hooks, Outgoing
from .link import Link, LinkState
from .settling import SETTLE_TIMEOUT

__all__ = ["DEFAULT_NACK_RETRY", "ConfirmCallback", "Publisher"]

logger = logging.getLogger("kiwi_anyio.communicator")

DEFAULT_NACK_RETRY: Final = 30.0  # seconds a nacked publish is sent again

ConfirmCallback = Callable[[BaseException | None], None]


class Publisher:
    """Confirmed publishing on a :class:`~.link.Link`; see the module docstring."""

    def __init__(self, link: Link, hooks: Hooks, *, nack_retry_timeout: float) -> None:
        self._link = link
        self._hooks = hooks
        self.nack_retry_timeout = nack_retry_timeout
        # publisher channels retired after nacks (weak: a send still waiting on one when it
        # closes must find it here, however late it wakes up)
        self._retired: weakref.WeakSet[Channel] = weakref.WeakSet()

    async def publish(
        self,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        properties: Properties,
        mandatory: bool,
        what: str,
        allow_closing: bool = False,
        prepare: Callable[[], Awaitable[None]] | None = None,
        _hooked: bool = False,
    ) -> None:
        """Publish with confirms; after a lost link wait for recovery and send it again.

        ``prepare`` declares what the message needs (exchange, queue, binding); it is
        called before each attempt and is cheap once done on the current connection, so a
        message resent after a broker restart finds its topology declared again.

        Raises:
            MessageReturned: a mandatory message nothing routes.
            DeliveryFailed: the broker refused it (nacked past ``nack_retry_timeout``, a
                closed channel), or no link came back within ``reconnect_timeout``.
            CommunicatorClosed: the communicator closed meanwhile.

        Cancellation: the message may or may not have been queued by the broker.
        """
        link = self._link
        if self._hooks.publish and not _hooked:
            outgoing = Outgoing(body, exchange, routing_key, properties, mandatory, what)
            self._hooks.before_publish(outgoing)
            body, properties = outgoing.body, outgoing.properties
            if outgoing.after:  # a hook wants the outcome
                try:
                    await self.publish(
                        body,
                        exchange=exchange,
                        routing_key=routing_key,
                        properties=properties,
                        mandatory=mandatory,
                        what=what,
                        allow_closing=allow_closing,
                        prepare=prepare,
                        _hooked=True,
                    )
                except BaseException as exc:
                    outgoing.published(exc)
                    raise
                outgoing.published(None)
                return
        redeclared = False
        deadline: float | None = None  # of resending: set when the link is first lost
        nack_deadline: float | None = None  # of resending after nacks
        nacks = 0
        while True:
            connection = link.connection
            channel: Channel | None = None
            try:
                generation = link.generation
                if prepare is not None:
                    await prepare()
                channel = link.publisher
                if channel is None or not channel.is_open:
                    channel = await link.publisher_channel(allow_closing)
                if link.generation != generation:
                    continue  # reconnected meanwhile: declare again on the new connection
                connection = link.connection
                await channel.basic_publish(
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=properties,
                    mandatory=mandatory,
                )
                return
            except MessageReturned:
                raise
            except PublishNacked as exc:
                # the broker refused it: a quorum queue electing a new leader (a fail-over),
                # an internal error, a full queue with reject-publish. Send it again for a
                # few seconds with backoff (the first two pass), then give up.
                now = anyio.current_time()
                if nack_deadline is None:
                    nack_deadline = now + self.nack_retry_timeout
                if now < nack_deadline and link.state is LinkState.OPEN:
                    nacks += 1
                    logger.info("the broker nacked %s; sending it again", what)
                    # on a fresh channel: after a quorum queue's leader moved, RabbitMQ 3.10
                    # went on nacking every publish on a channel that had talked to it
                    # during the election (for as long as we tried), a new one was fine
                    if channel is not None:
                        self.retire(channel)
                    await anyio.sleep(min(0.05 * 2**nacks, 1.0))
                    continue
                raise DeliveryFailed(f"cannot send {what}: the broker nacked it") from exc
            except (ChannelClosed, ConnectionClosed) as exc:
                allowed = (LinkState.OPEN, LinkState.CLOSING if allow_closing else LinkState.OPEN)
                if link.state not in allowed:
                    raise CommunicatorClosed(
                        f"the communicator closed while sending {what}"
                    ) from exc
                if channel is not None and channel in self._retired:
                    continue  # we closed that channel (see retire): not confirmed
                lost = connection is None or not connection.is_open
                if lost and link.reconnect:
                    now = anyio.current_time()
                    if deadline is None:  # the first loss: resend for reconnect_timeout
                        deadline = now + link.reconnect_timeout
                    if now < deadline:
                        # not confirmed before the link dropped: send it again after
                        # recovery (at-least-once: seen twice perhaps, never zero times)
                        logger.info("resending %s after the connection was lost", what)
                        continue
                if not redeclared and exc.reply_code == 404:
                    # the exchange vanished (auto-delete, a broker restart, an operator):
                    # declare it (and what depends on it) again, once
                    redeclared = True
                    link.forget_exchange(exchange)
                    await link.ensure_exchange(exchange)
                    continue
                raise DeliveryFailed(f"cannot send {what}: {exc}") from exc

    def publish_nowait(
        self,
        channel: Channel,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        properties: Properties,
        what: str,
        on_confirm: ConfirmCallback,
    ) -> None:
        """Queue a publish on ``channel`` with no task switch; ``on_confirm(error)`` is
        called with the broker's answer. Raises what ``Channel.publish_nowait`` raises
        (``anyio.WouldBlock`` while the broker blocks publishing, ...)."""
        if self._hooks.publish:
            outgoing = Outgoing(body, exchange, routing_key, properties, False, what)
            self._hooks.before_publish(outgoing)
            body, properties = outgoing.body, outgoing.properties
            if outgoing.after:
                on_confirm = _observed(outgoing, on_confirm)
                try:
                    channel.publish_nowait(
                        body,
                        exchange=exchange,
                        routing_key=routing_key,
                        properties=properties,
                        on_confirm=on_confirm,
                    )
                except BaseException as exc:
                    outgoing.published(exc)
                    raise
                return
        channel.publish_nowait(
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=properties,
            on_confirm=on_confirm,
        )

    def retire(self, channel: Channel) -> None:
        """Publish on a new channel from now on; close ``channel`` once its confirms are in."""
        link = self._link
        if link.tg is None or not link.retire_publisher(channel):
            return  # another send retired it already
        self._retired.add(channel)
        link.tg.start_soon(self._close_retired, channel)

    async def _close_retired(self, channel: Channel) -> None:
        """Close a retired publisher channel after a grace period for its confirms (sends
        still unconfirmed then are sent again, see :meth:`publish`)."""
        try:
            await anyio.sleep(SETTLE_TIMEOUT)
        finally:
            with anyio.CancelScope(shield=True):
                await channel.aclose()


def _observed(outgoing: Outgoing, on_confirm: ConfirmCallback) -> ConfirmCallback:
    """``on_confirm`` that first reports the broker's answer to ``outgoing``'s callbacks."""

    def confirmed(error: BaseException | None) -> None:
        outgoing.published(error)
        on_confirm(error)

    return confirmed
