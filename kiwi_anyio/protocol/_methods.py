"""The name-carrying AMQP methods, validated by RabbitMQ's rules instead of pamqp's.

pamqp checks exchange and queue names against the AMQP 0-9-1 grammar,
``^[a-zA-Z0-9-_.:@#,/+ ]*$`` with at most 127 (exchanges) or 256 (queues) characters, so
``Queue.Declare(queue="café")`` raises ``ValueError`` although RabbitMQ takes any UTF-8 name
of up to 255 bytes (and kiwiPy, through pika, sends such names). The classes here are
pamqp's, with a :meth:`validate` that checks only what the wire format needs:

* every ``shortstr`` field (exchange, queue, routing key, consumer tag, exchange type …) is a
  ``str`` whose UTF-8 encoding fits in 255 bytes (lone surrogates cannot be encoded);
* ``ticket`` is 0, and ``Connection.Open``'s ``capabilities`` and ``insist`` are empty and
  false (deprecated fields that must keep those values).

Anything else (reserved ``amq.`` prefixes, permissions, an empty name where one is needed)
is the broker's to refuse, with a channel error that names it. The classes marshal exactly
as pamqp's (same ``index``, same attributes, same encoder); ``tests/protocol/test_methods.py``
checks the bytes against pamqp's for names both accept.

Usage mirrors pamqp's namespaces: ``_methods.Queue.Declare(queue="café")`` instead of
``commands.Queue.Declare(queue="café")``. The objects are instances of the pamqp classes, so
``isinstance`` checks and ``valid_responses`` work unchanged.

The client's requests are here, and so are the broker's name-carrying replies
(``Queue.DeclareOk``, ``Basic.Deliver``, ``Basic.GetOk``, ``Basic.Return``) for code that plays
the broker (the memory broker, tests): decoding never validates, so the client needs no
relaxed replies. ``Connection.Open`` is here too: pamqp refuses virtual hosts over 127
characters, RabbitMQ does not.
"""

from __future__ import annotations

from typing import Final

from pamqp import commands
from pamqp.base import Frame

__all__ = ["MAX_SHORTSTR", "Basic", "Connection", "Exchange", "Queue", "check_shortstr"]

MAX_SHORTSTR: Final = 255
"""The longest AMQP short string, in bytes (UTF-8)."""

_SHOWN: Final = 40  # characters of an offending value quoted in an error message


def check_shortstr(method: str, field: str, value: object) -> None:
    """Check that ``value`` fits an AMQP short string (UTF-8, at most 255 bytes).

    Raises:
        TypeError: ``value`` is not a ``str``.
        ValueError: it cannot be encoded in UTF-8, or its encoding is longer than 255 bytes.
    """
    if not isinstance(value, str):
        raise TypeError(f"{method}: {field} must be a str, not {type(value).__name__}")
    if value.isascii():
        size = len(value)
    else:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError(
                f"{method}: {field} {_shown(value)} is not valid Unicode "
                "(it cannot be encoded in UTF-8)"
            ) from None
    if size > MAX_SHORTSTR:
        raise ValueError(
            f"{method}: {field} {_shown(value)} is {size} bytes in UTF-8; "
            f"AMQP allows at most {MAX_SHORTSTR}"
        )


def _shown(value: str) -> str:
    return repr(value if len(value) <= _SHOWN else value[:_SHOWN] + "...")


def _validate(method: Frame) -> None:
    ticket = getattr(method, "ticket", 0)
    if ticket is not None and ticket != 0:
        raise ValueError(f"{method.name}: ticket must be 0")
    for field in method.__slots__:
        if method.amqp_type(field) == "shortstr":
            value = getattr(method, field)
            if value is not None:
                check_shortstr(method.name, field, value)


class Connection:
    """``Connection`` methods with RabbitMQ's name rules."""

    class Open(commands.Connection.Open):
        """pamqp's ``Connection.Open``; the virtual host: any UTF-8 of at most 255 bytes."""

        def validate(self) -> None:
            _validate(self)
            if self.capabilities:
                raise ValueError("Connection.Open: capabilities must be empty")
            if self.insist:
                raise ValueError("Connection.Open: insist must be False")


class Exchange:
    """``Exchange`` methods with RabbitMQ's name rules."""

    class Declare(commands.Exchange.Declare):
        """pamqp's ``Exchange.Declare``; names: any UTF-8 of at most 255 bytes."""

        def validate(self) -> None:
            _validate(self)

    class Delete(commands.Exchange.Delete):
        """pamqp's ``Exchange.Delete``; names: any UTF-8 of at most 255 bytes."""

        def validate(self) -> None:
            _validate(self)

    class Bind(commands.Exchange.Bind):
        """pamqp's ``Exchange.Bind``; names: any UTF-8 of at most 255 bytes."""

        def validate(self) -> None:
            _validate(self)

    class Unbind(commands.Exchange.Unbind):
        """pamqp's ``Exchange.Unbind``; names: any UTF-8 of at most 255 bytes."""

        def validate(self) -> None:
            _validate(self)


class Queue:
    """``Queue`` methods with RabbitMQ's name rules."""

    class Declare(commands.Queue.Declare):
        """pamqp's ``Queue.Declare``; names: any UTF-8 of at most 255 bytes."""

        def validate(self) -> None:
            _validate(self)

    class DeclareOk(commands.Queue.DeclareOk):
        """pamqp's ``Queue.DeclareOk``; names: any UTF-8 of at most 255 bytes."""

        def validate(self) -> None:
            _validate(self)

    class Bind(commands.Queue.Bind):
        """pamqp's ``Queue.Bind``; names: any UTF-8 of at most 255 bytes."""

        def validate(self) -> None:
            _validate(self)

    class Unbind(commands.Queue.Unbind):
        """pamqp's ``Queue.Unbind``; names: any UTF-8 of at most 255 bytes."""

        def validate(self) -> None:
            _validate(self)

    class Purge(commands.Queue.Purge):
        """pamqp's ``Queue.Purge``; names: any UTF-8 of at most 255 bytes."""

        def validate(self) -> None:
            _validate(self)

    class Delete(commands.Queue.Delete):
        """pamqp's ``Queue.Delete``; names: any UTF-8 of at most 255 bytes."""

        def validate(self) -> None:
            _validate(self)


class Basic:
    """``Basic`` methods with RabbitMQ's name rules."""

    class Publish(commands.Basic.Publish):
        """pamqp's ``Basic.Publish``; names: any UTF-8 of at most 255 bytes."""

        def validate(self) -> None:
            _validate(self)

    class Consume(commands.Basic.Consume):
        """pamqp's ``Basic.Consume``; names: any UTF-8 of at most 255 bytes."""

        def validate(self) -> None:
            _validate(self)

    class Get(commands.Basic.Get):
        """pamqp's ``Basic.Get``; names: any UTF-8 of at most 255 bytes."""

        def validate(self) -> None:
            _validate(self)

    class Deliver(commands.Basic.Deliver):
        """pamqp's ``Basic.Deliver``; names: any UTF-8 of at most 255 bytes."""

        def validate(self) -> None:
            _validate(self)

    class GetOk(commands.Basic.GetOk):
        """pamqp's ``Basic.GetOk``; names: any UTF-8 of at most 255 bytes."""

        def validate(self) -> None:
            _validate(self)

    class Return(commands.Basic.Return):
        """pamqp's ``Basic.Return``; names: any UTF-8 of at most 255 bytes."""

        def validate(self) -> None:
            _validate(self)
