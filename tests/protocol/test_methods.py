"""The relaxed name-carrying methods of ``kiwi_anyio.protocol._methods`` (no broker).

They must marshal byte for byte as pamqp's for every name pamqp accepts, accept the UTF-8
names RabbitMQ accepts (up to 255 bytes), and refuse only what cannot go on the wire.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands, frame
from pamqp.base import Frame

from kiwi_anyio.protocol import _methods

# (relaxed class, pamqp class, the name fields it carries)
PAIRS: list[tuple[type[Frame], type[Frame], tuple[str, ...]]] = [
    (_methods.Exchange.Declare, commands.Exchange.Declare, ("exchange", "exchange_type")),
    (_methods.Exchange.Delete, commands.Exchange.Delete, ("exchange",)),
    (_methods.Exchange.Bind, commands.Exchange.Bind, ("destination", "source", "routing_key")),
    (_methods.Exchange.Unbind, commands.Exchange.Unbind, ("destination", "source", "routing_key")),
    (_methods.Queue.Declare, commands.Queue.Declare, ("queue",)),
    (_methods.Queue.Bind, commands.Queue.Bind, ("queue", "exchange", "routing_key")),
    (_methods.Queue.Unbind, commands.Queue.Unbind, ("queue", "exchange", "routing_key")),
    (_methods.Queue.Purge, commands.Queue.Purge, ("queue",)),
    (_methods.Queue.Delete, commands.Queue.Delete, ("queue",)),
    (_methods.Basic.Publish, commands.Basic.Publish, ("exchange", "routing_key")),
    (_methods.Basic.Consume, commands.Basic.Consume, ("queue", "consumer_tag")),
    (_methods.Basic.Get, commands.Basic.Get, ("queue",)),
    # what a broker sends (for the memory broker and tests), and Connection.Open
    (_methods.Connection.Open, commands.Connection.Open, ("virtual_host",)),
    (_methods.Queue.DeclareOk, commands.Queue.DeclareOk, ("queue",)),
    (_methods.Basic.Deliver, commands.Basic.Deliver, ("consumer_tag", "exchange", "routing_key")),
    (_methods.Basic.GetOk, commands.Basic.GetOk, ("exchange", "routing_key")),
    (_methods.Basic.Return, commands.Basic.Return, ("reply_text", "exchange", "routing_key")),
]
WITH_TICKET = [pair for pair in PAIRS if "ticket" in pair[1].__slots__]
IDS = [pamqp_cls.name for _, pamqp_cls, _ in PAIRS]

# what pamqp's grammar allows: ^[a-zA-Z0-9-_.:@#,/+ ]*$, at most 127 characters
PAMQP_NAMES = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:@#,/+ ",
    max_size=127,
)
OPTIONS: dict[str, Any] = {
    "durable": True,
    "auto_delete": True,
    "passive": False,
    "if_unused": True,
    "if_empty": True,
    "no_ack": True,
    "exclusive": True,
    "mandatory": True,
    "arguments": {"x-message-ttl": 1000, "x-name": "v"},
    "delivery_tag": 7,
    "redelivered": True,
    "message_count": 3,
    "consumer_count": 2,
    "reply_code": 312,
}


def _kwargs(cls: type[Frame], names: dict[str, str]) -> dict[str, Any]:
    kwargs = {k: v for k, v in OPTIONS.items() if k in cls.__slots__}
    kwargs.update(names)
    return kwargs


@pytest.mark.parametrize(("relaxed", "strict", "fields"), PAIRS, ids=IDS)
def test_they_are_the_pamqp_classes(
    relaxed: type[Frame], strict: type[Frame], fields: tuple[str, ...]
) -> None:
    assert issubclass(relaxed, strict)
    assert (relaxed.name, relaxed.index, relaxed.frame_id) == (
        strict.name,
        strict.index,
        strict.frame_id,
    )
    assert relaxed.valid_responses == strict.valid_responses
    assert relaxed.__slots__ == strict.__slots__
    for field in fields:
        assert strict.amqp_type(field) == "shortstr"


@pytest.mark.parametrize(("relaxed", "strict", "fields"), PAIRS, ids=IDS)
@settings(max_examples=40, derandomize=True)
@given(data=st.data())
def test_ascii_names_marshal_exactly_as_pamqp(
    relaxed: type[Frame], strict: type[Frame], fields: tuple[str, ...], data: st.DataObject
) -> None:
    names = {field: data.draw(PAMQP_NAMES, label=field) for field in fields}
    channel = data.draw(st.integers(1, 65535), label="channel")
    ours = relaxed(**_kwargs(relaxed, names))
    theirs = strict(**_kwargs(strict, names))
    assert frame.marshal(ours, channel) == frame.marshal(theirs, channel)
    # and the broker side reads it back as the same method
    _, _, decoded = frame.unmarshal(frame.marshal(ours, channel))
    assert isinstance(decoded, strict)
    assert dict(decoded) == dict(theirs)


@pytest.mark.parametrize(("relaxed", "strict", "fields"), PAIRS, ids=IDS)
def test_names_pamqp_refuses_are_accepted(
    relaxed: type[Frame], strict: type[Frame], fields: tuple[str, ...]
) -> None:
    for name in ("café", "队列", "a" * 200, "é" * 127, "name with ü and 🐍", "tab\there"):
        names = dict.fromkeys(fields, name)
        method = relaxed(**_kwargs(relaxed, names))
        _, _, decoded = frame.unmarshal(frame.marshal(method, 1))
        for field in fields:
            assert getattr(decoded, field) == name
    # what pamqp refuses: non-ASCII names, a virtual host of over 127 characters
    refused = "v" * 200 if strict is commands.Connection.Open else "café"
    with pytest.raises(ValueError, match=r"Invalid value|Max length exceeded"):
        strict(**_kwargs(strict, dict.fromkeys(fields, refused)))
    relaxed(**_kwargs(relaxed, dict.fromkeys(fields, refused)))


@pytest.mark.parametrize(("relaxed", "strict", "fields"), PAIRS, ids=IDS)
def test_names_over_255_bytes_are_refused_and_named(
    relaxed: type[Frame], strict: type[Frame], fields: tuple[str, ...]
) -> None:
    relaxed(**_kwargs(relaxed, dict.fromkeys(fields, "x" * 255)))  # the largest that fits
    relaxed(**_kwargs(relaxed, dict.fromkeys(fields, "€" * 85)))  # 255 bytes
    for field in fields:
        with pytest.raises(ValueError, match=f"{field} .* 256 bytes in UTF-8; AMQP allows at most"):
            relaxed(**_kwargs(relaxed, {field: "é" * 128}))
        with pytest.raises(ValueError, match="not valid Unicode"):
            relaxed(**_kwargs(relaxed, {field: "bad\udc80surrogate"}))
        with pytest.raises(TypeError, match=f"{field} must be a str"):
            relaxed(**_kwargs(relaxed, {field: b"bytes"}))  # type: ignore[dict-item]


def test_long_names_are_shortened_in_the_message() -> None:
    with pytest.raises(ValueError, match="AMQP allows at most 255") as info:
        _methods.Queue.Declare(queue="q" * 1000)
    assert len(str(info.value)) < 200
    assert "1000 bytes" in str(info.value)


@pytest.mark.parametrize(
    ("relaxed", "strict", "fields"), WITH_TICKET, ids=[p[1].name for p in WITH_TICKET]
)
def test_ticket_must_still_be_zero(
    relaxed: type[Frame], strict: type[Frame], fields: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError, match="ticket must be 0"):
        relaxed(ticket=1)  # type: ignore[call-arg]


def test_validate_runs_again_when_marshalling() -> None:
    method = _methods.Queue.Declare(queue="ok")
    method.queue = "x" * 256
    with pytest.raises(ValueError, match="queue"):
        frame.marshal(method, 1)


@settings(max_examples=200, derandomize=True)
@given(name=st.text(max_size=300))
def test_any_text_is_accepted_exactly_when_it_fits(name: str) -> None:
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        with pytest.raises(ValueError, match="not valid Unicode"):
            _methods.Queue.Declare(queue=name)
        return
    if size > 255:
        with pytest.raises(ValueError, match=f"{size} bytes in UTF-8"):
            _methods.Queue.Declare(queue=name)
    else:
        data = frame.marshal(_methods.Queue.Declare(queue=name), 3)
        _, _, decoded = frame.unmarshal(data)
        assert isinstance(decoded, commands.Queue.Declare)
        assert decoded.queue == name


def test_connection_open_keeps_the_deprecated_fields_empty() -> None:
    assert frame.marshal(_methods.Connection.Open(virtual_host="/"), 0) == frame.marshal(
        commands.Connection.Open(virtual_host="/"), 0
    )
    with pytest.raises(ValueError, match="capabilities must be empty"):
        _methods.Connection.Open(capabilities="x")
    with pytest.raises(ValueError, match="insist must be False"):
        _methods.Connection.Open(insist=True)
