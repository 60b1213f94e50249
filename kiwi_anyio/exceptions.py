"""Every exception kiwi_anyio raises.

The tree::

    KiwiError
    ├── AMQPError                      errors of the AMQP client (kiwi_anyio.protocol)
    │   ├── InvalidURL (also ValueError)
    │   ├── ConnectionFailed           could not establish a connection
    │   │   ├── AuthenticationError    the broker refused the credentials (403 at login)
    │   │   └── VhostNotFound          the virtual host does not exist or is not allowed
    │   ├── ConnectionClosed           an established connection ended
    │   │   └── HeartbeatTimeout       the peer stopped answering
    │   ├── ChannelClosed              a channel was closed (reply code and text)
    │   │   └── ConsumerCancelled      the broker cancelled a consumer (queue deleted)
    │   ├── PublishError
    │   │   ├── PublishNacked          the broker nacked a confirmed publish
    │   │   └── MessageReturned        a mandatory message could not be routed
    │   └── ProtocolError              the peer broke AMQP 0-9-1 (or we would)
    │       └── UndecodableContent     one message's content header could not be decoded
    ├── the kiwiPy names: CommunicatorClosed, RemoteException, DeliveryFailed,
    │   UnroutableError (also MessageReturned), TaskRejected,
    │   DuplicateSubscriberIdentifier, QueueEmpty, UndecodableMessage
    │   └── InvalidMessage (a RemoteException)  a body failed a typed subscriber's validation
    ├── TaskDeadLettered (also RemoteException, DeliveryFailed)  a poison task was set aside
    ├── Retry                          raised by a task subscriber: try the task again later
    ├── RequestLost (also DeliveryFailed)  a request's reply can no longer arrive
    └── RequestTimeout (also TimeoutError) no reply within the request's timeout

Timeouts are the builtin :class:`TimeoutError`, exported as ``kiwi_anyio.TimeoutError`` as
kiwiPy does.
"""

from __future__ import annotations

__all__ = [
    "AMQPError",
    "AuthenticationError",
    "ChannelClosed",
    "CommunicatorClosed",
    "ConnectionClosed",
    "ConnectionFailed",
    "ConsumerCancelled",
    "DeliveryFailed",
    "DuplicateSubscriberIdentifier",
    "HeartbeatTimeout",
    "InvalidMessage",
    "InvalidURL",
    "KiwiError",
    "MessageReturned",
    "ProtocolError",
    "PublishError",
    "PublishNacked",
    "QueueEmpty",
    "RemoteException",
    "RequestLost",
    "RequestTimeout",
    "Retry",
    "TaskDeadLettered",
    "TaskRejected",
    "UndecodableContent",
    "UndecodableMessage",
    "UnroutableError",
    "VhostNotFound",
]


class KiwiError(Exception):
    """Base class of every exception raised by kiwi_anyio."""


# --------------------------------------------------------------------------- AMQP client


class AMQPError(KiwiError):
    """Base class of the AMQP client's errors."""


class InvalidURL(AMQPError, ValueError):
    """A connection URL could not be understood. The message never contains the password."""


class ConnectionFailed(AMQPError):
    """No connection could be established (refused, unreachable, timed out, handshake failed)."""


class AuthenticationError(ConnectionFailed):
    """The broker refused the credentials or the authentication mechanism."""


class VhostNotFound(ConnectionFailed):
    """The virtual host does not exist, or the user may not access it."""


class _Closed(AMQPError):
    def __init__(self, reply_code: int, reply_text: str, message: str | None = None) -> None:
        self.reply_code = reply_code
        self.reply_text = reply_text
        super().__init__(message or f"{reply_code} {reply_text}")


class ConnectionClosed(_Closed):
    """The connection ended: closed by the broker, by us, or lost.

    Attributes:
        reply_code: the AMQP reply code (320 for a broker shutdown, 0 when the socket was lost).
        reply_text: the broker's text, or a description of the failure.
    """


class HeartbeatTimeout(ConnectionClosed):
    """Nothing was received from the broker for about two heartbeat intervals."""


class ChannelClosed(_Closed):
    """The channel is closed; the broker's reply code and text say why (e.g. 404, 406).

    The connection stays usable: open another channel.
    """


class ConsumerCancelled(ChannelClosed):
    """The broker cancelled the consumer, for example because its queue was deleted."""


class PublishError(AMQPError):
    """A confirmed publish was not accepted by the broker."""


class PublishNacked(PublishError):
    """The broker answered a confirmed publish with ``Basic.Nack``."""


class ProtocolError(AMQPError):
    """The peer sent something that breaks AMQP 0-9-1, or we were asked to.

    Attributes:
        reply_code: the AMQP code the connection is closed with (e.g. 501 frame error,
            502 syntax error, 505 unexpected frame).
    """

    def __init__(self, message: str, reply_code: int = 501) -> None:
        self.reply_code = reply_code
        super().__init__(message)


class UndecodableContent(ProtocolError):
    """One delivered message had a content header that could not be decoded.

    The message is rejected (not requeued) and the connection goes on.
    """


# --------------------------------------------------------------------------- kiwiPy names


class CommunicatorClosed(KiwiError):
    """The communicator is closed; no further operation is possible."""


class RemoteException(KiwiError):
    """The remote subscriber raised; the message is the remote exception's text.

    Attributes:
        remote_type: the remote exception's class name when the peer sent it, else ``None``.
        remote_traceback: the remote traceback text when the peer sent it, else ``None``.
    """

    def __init__(
        self,
        message: object = "",
        remote_type: str | None = None,
        remote_traceback: str | None = None,
    ) -> None:
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback
        super().__init__(message)


class DeliveryFailed(KiwiError):
    """A message could not be delivered."""


class UnroutableError(DeliveryFailed):
    """No queue is bound for the message (for RPC: no subscriber with that identifier)."""


class MessageReturned(UnroutableError, PublishError):
    """The broker returned a mandatory message (``Basic.Return``): nothing could route it.

    Attributes:
        reply_code: the broker's reply code (312 NO_ROUTE).
        reply_text: the broker's text.
        exchange: the exchange the message was published to.
        routing_key: its routing key.
    """

    def __init__(self, reply_code: int, reply_text: str, exchange: str, routing_key: str) -> None:
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.exchange = exchange
        self.routing_key = routing_key
        super().__init__(
            f"message to exchange {exchange!r} with routing key {routing_key!r} was returned: "
            f"{reply_code} {reply_text}"
        )


class TaskRejected(KiwiError):
    """Raised by a task subscriber to pass a task on to another subscriber."""


class DuplicateSubscriberIdentifier(KiwiError):
    """A subscriber with this identifier already exists."""


class QueueEmpty(KiwiError):
    """No task arrived in the queue in time."""


class UndecodableMessage(KiwiError):
    """A message body could not be decoded; it is rejected, never requeued."""


class RequestLost(DeliveryFailed):
    """A request can no longer be answered: its queue was deleted, its reply queue or the
    broker's state was lost. The request may or may not have been handled."""


class RequestTimeout(KiwiError, TimeoutError):
    """No reply came within the request's ``timeout`` (or the communicator's
    ``request_timeout``). The request may still be handled later; its reply is dropped."""


class InvalidMessage(RemoteException):
    """A message body did not validate against its typed subscriber's annotation.

    The subscriber never runs: the sender's future raises this (a :class:`RemoteException`),
    and a task is acknowledged, not redelivered. The message names every failing field and
    its problem, e.g. ``invalid Order: quantity: Input should be a valid integer``. See
    ``docs/typed.md``.

    Attributes:
        errors: ``(location, problem)`` pairs, the location a dotted field path (``""`` for the
            body itself); empty on the sender's side, where only the message arrives.
    """

    errors: tuple[tuple[str, str], ...] = ()

    def __init__(
        self,
        message: object = "",
        remote_type: str | None = None,
        remote_traceback: str | None = None,
        *,
        errors: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message, remote_type, remote_traceback)
        self.errors = tuple(errors)


class TaskDeadLettered(RemoteException, DeliveryFailed):
    """A task was delivered ``max_deliveries`` times without being answered (its workers
    died, or it asked to be retried that often) and was moved to its queue's dead-letter
    queue (``<queue>.dead-letters``), where it can be inspected, requeued or purged. The
    message says why and how often it was tried."""


class Retry(KiwiError):
    """Raised by a task subscriber: put the task back and deliver it again after ``delay``
    seconds, up to the queue's ``max_deliveries`` (then it is dead-lettered).

    ``raise kiwi_anyio.Retry(delay=0.5)``; the reason (the message) is kept in a header.
    """

    def __init__(self, message: object = "retry requested", *, delay: float = 0.0) -> None:
        super().__init__(message)
        if delay < 0:
            raise ValueError(f"a retry delay must be >= 0, not {delay!r}")
        self.delay = delay
