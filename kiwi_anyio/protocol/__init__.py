"""kiwi_anyio's own AMQP 0-9-1 client.

Two layers:

* the sans-I/O core, :class:`AMQPConnection` (bytes in → :mod:`events <.events>` out,
  commands in → bytes out), tested without a socket;
* the anyio driver, :func:`connect`, giving :class:`Connection` and :class:`Channel` with
  method names as pika and aiormq spell them (``queue_declare``, ``basic_publish`` …): the
  RabbitMQ implementation of the channel interface :mod:`kiwi_anyio.channel` (where their
  methods are documented).

Nothing here imports the Communicator or the package root; the one way up is
:class:`~kiwi_anyio.MessageReturned`, which :mod:`kiwi_anyio.exceptions` derives from kiwiPy's
``UnroutableError`` (so ``except UnroutableError`` catches a returned message).
"""

from __future__ import annotations

from . import events as events
from ._channel import Channel as Channel
from ._channel import Consumer as Consumer
from ._channel import Message as Message
from ._connection import AMQPConnection as AMQPConnection
from ._connection import ChannelState as ChannelState
from ._connection import ConnectionState as ConnectionState
from .client import Connection as Connection
from .client import connect as connect
from .url import Address as Address
from .url import ConnectionParameters as ConnectionParameters
from .url import parse_url as parse_url

Properties = events.Properties

__all__ = [
    "AMQPConnection",
    "Address",
    "Channel",
    "ChannelState",
    "Connection",
    "ConnectionParameters",
    "ConnectionState",
    "Consumer",
    "Message",
    "Properties",
    "connect",
    "events",
    "parse_url",
]
