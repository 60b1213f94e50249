"""Logs with context (#16): every record about a delivered message carries its consumer,
queue, identifier, correlation id and message id as attributes; a subscriber's exception is
logged once, with its traceback, at the level of the ``subscriber_error_log_level`` option;
an undecodable message is logged once, with its identifiers. On both backends, on memory://
and RabbitMQ."""

from __future__ import annotations

import json
import logging
import traceback
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

import kiwi_anyio
from kiwi_anyio import _wire as wire
from kiwi_anyio import telemetry
from kiwi_anyio.hooks import Outgoing
from kiwi_anyio.protocol import Properties
from kiwi_anyio.testing.pytest_plugin import private_names
from tests import test_telemetry

pytestmark = pytest.mark.anyio

TIMEOUT = 20

url = test_telemetry.url  # the fixture: a private memory:// broker, and RabbitMQ


class Boom(Exception):
    """What the subscribers raise."""


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every record of the library's loggers, DEBUG and up."""
    caplog.set_level(logging.DEBUG, logger="kiwi_anyio")
    return caplog


@asynccontextmanager
async def pair(
    url: str, sent: list[Properties] | None = None, **options: Any
) -> AsyncIterator[tuple[kiwi_anyio.Communicator, kiwi_anyio.Communicator]]:
    """A sender (whose published properties go to ``sent``) and a worker on private names."""
    names = private_names("logging")
    sender = kiwi_anyio.connect(url, **names)
    worker = kiwi_anyio.connect(url, **names, **options)
    if sent is not None:

        def keep(outgoing: Outgoing) -> None:
            sent.append(outgoing.properties)

        sender.hooks.add_publish_hook(keep)
    async with sender, worker:
        yield sender, worker


def about(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    """The records whose message or exception mentions ``text``."""
    found = []
    for record in caplog.records:
        exc = record.exc_info[1] if record.exc_info else None
        if text in record.getMessage() or (exc is not None and text in str(exc)):
            found.append(record)
    return found


def context(record: logging.LogRecord) -> dict[str, Any]:
    """The record's context fields (``telemetry.LOG_FIELDS``), as a JSON formatter sees them."""
    return {field: getattr(record, field) for field in telemetry.LOG_FIELDS}


def assert_traceback(record: logging.LogRecord, text: str, function: str) -> None:
    assert record.exc_info is not None
    exc = record.exc_info[1]
    assert isinstance(exc, Boom) and str(exc) == text
    formatted = "".join(traceback.format_exception(*record.exc_info))
    assert f"in {function}" in formatted  # the subscriber's frame


async def wait_for_record(caplog: pytest.LogCaptureFixture, text: str) -> None:
    with anyio.fail_after(10):
        while not about(caplog, text):
            await anyio.sleep(0.01)


@pytest.mark.parametrize("instrumented", [True, False], ids=["telemetry", "no-telemetry"])
async def test_an_rpc_subscribers_exception_is_logged_once_with_its_context(
    url: str, logs: pytest.LogCaptureFixture, instrumented: bool
) -> None:
    text = f"boom {uuid.uuid4().hex}"
    identifier = f"fails-{uuid.uuid4().hex[:8]}"

    def failing_rpc(_comm: Any, _msg: Any) -> None:
        raise Boom(text)

    sent: list[Properties] = []
    with anyio.fail_after(TIMEOUT):
        async with pair(url, sent, telemetry=None if instrumented else False) as (
            sender,
            worker,
        ):
            await worker.add_rpc_subscriber(failing_rpc, identifier)
            with pytest.raises(kiwi_anyio.RemoteException, match=text):
                await (await sender.rpc_send(identifier, 1))
            exchange = sender.message_exchange
    # the communicators have closed: nothing more will be logged about it
    (record,) = about(logs, text)
    assert record.levelno == logging.INFO  # the default: the sender got it back
    assert record.name == "kiwi_anyio.communicator"
    assert_traceback(record, text, "failing_rpc")
    (request,) = [p for p in sent if p.reply_to]
    fields = context(record)
    assert isinstance(fields["delivery_tag"], int)
    assert fields == {
        "messaging_consumer": f"RPC subscriber {identifier!r}",
        "queue": f"{exchange}.rpc.{identifier}",
        "identifier": identifier,
        "routing_key": wire.rpc_routing_key(identifier),
        "correlation_id": request.correlation_id,
        "message_id": request.message_id,
        "delivery_tag": fields["delivery_tag"],
    }
    assert request.correlation_id and request.message_id
    # a JSON formatter that copies the fields shows them
    shown = json.loads(json.dumps(context(record)))
    assert shown["correlation_id"] == request.correlation_id


@pytest.mark.parametrize("no_reply", [False, True], ids=["reply", "no-reply"])
async def test_a_task_subscribers_exception_is_logged_once_with_its_context(
    url: str, logs: pytest.LogCaptureFixture, no_reply: bool
) -> None:
    text = f"boom {uuid.uuid4().hex}"

    def failing_task(_comm: Any, _task: Any) -> None:
        raise Boom(text)

    sent: list[Properties] = []
    with anyio.fail_after(TIMEOUT):
        async with pair(url, sent) as (sender, worker):
            identifier = await worker.add_task_subscriber(failing_task)
            future = await sender.task_send("t", no_reply=no_reply)
            if no_reply:
                assert future is None
                await wait_for_record(logs, text)
            else:
                assert future is not None
                with pytest.raises(kiwi_anyio.RemoteException, match=text):
                    await future
            queue = sender.task_queue_name
    (record,) = about(logs, text)
    # the sender gets it back: INFO; nobody does: ERROR
    assert record.levelno == (logging.ERROR if no_reply else logging.INFO)
    assert_traceback(record, text, "failing_task")
    (task,) = sent
    fields = context(record)
    assert isinstance(fields["delivery_tag"], int)
    assert fields == {
        "messaging_consumer": f"task queue {queue!r}",
        "queue": queue,
        "identifier": identifier,
        "routing_key": queue,
        "correlation_id": task.correlation_id,
        "message_id": task.message_id,
        "delivery_tag": fields["delivery_tag"],
    }
    assert task.message_id


async def test_a_broadcast_subscribers_exception_is_logged_once_with_its_context(
    url: str, logs: pytest.LogCaptureFixture
) -> None:
    text = f"boom {uuid.uuid4().hex}"
    correlation_id = f"cid-{uuid.uuid4().hex}"
    heard: list[Any] = []

    def failing_listener(_comm: Any, _body: Any, *_: Any) -> None:
        raise Boom(text)

    with anyio.fail_after(TIMEOUT):
        async with pair(url) as (sender, worker):
            failing = await worker.add_broadcast_subscriber(failing_listener)
            await worker.add_broadcast_subscriber(lambda _comm, body, *_: heard.append(body))
            await sender.broadcast_send("news", correlation_id=correlation_id)
            await wait_for_record(logs, text)
            while not heard:  # the other subscriber still hears it
                await anyio.sleep(0.01)
    (record,) = about(logs, text)
    assert record.levelno == logging.ERROR  # nobody receives it
    assert_traceback(record, text, "failing_listener")
    fields = context(record)
    assert fields["messaging_consumer"] == "broadcasts"
    assert str(fields["queue"]).startswith("broadcast-")
    assert fields["identifier"] == failing
    assert fields["correlation_id"] == correlation_id  # carried in the body
    assert isinstance(fields["delivery_tag"], int)
    assert heard == ["news"]


async def test_the_level_is_the_users(logs: pytest.LogCaptureFixture) -> None:
    url = f"memory://logging-{uuid.uuid4().hex}"
    raising = [""]  # what the subscribers raise now

    def fail(_comm: Any, *_: Any) -> None:
        raise Boom(raising[0])

    def levels(text: str) -> list[int]:
        return sorted(r.levelno for r in about(logs, text))

    with anyio.fail_after(TIMEOUT):
        async with pair(url, subscriber_error_log_level="WARNING") as (sender, worker):
            assert worker.subscriber_error_log_level == logging.WARNING
            await worker.add_rpc_subscriber(fail, "fails")
            await worker.add_broadcast_subscriber(fail)

            raising[0] = warned = f"boom {uuid.uuid4().hex}"
            with pytest.raises(kiwi_anyio.RemoteException):
                await (await sender.rpc_send("fails", 1))
            await sender.broadcast_send("news")
            with anyio.fail_after(10):
                while len(about(logs, warned)) < 2:
                    await anyio.sleep(0.01)

            # set on a running communicator, as a number
            worker.subscriber_error_log_level = logging.DEBUG
            raising[0] = debugged = f"boom {uuid.uuid4().hex}"
            with pytest.raises(kiwi_anyio.RemoteException):
                await (await sender.rpc_send("fails", 2))

            # and back to the default
            worker.subscriber_error_log_level = None
            raising[0] = default = f"boom {uuid.uuid4().hex}"
            with pytest.raises(kiwi_anyio.RemoteException):
                await (await sender.rpc_send("fails", 3))
    # the RPC's and the broadcast's, both at the level set
    assert levels(warned) == [logging.WARNING, logging.WARNING]
    assert levels(debugged) == [logging.DEBUG]
    assert levels(default) == [logging.INFO]
    assert all(r.exc_info for text in (warned, debugged, default) for r in about(logs, text))

    with pytest.raises(ValueError, match="unknown log level"):
        kiwi_anyio.connect(url, subscriber_error_log_level="LOUD")
    with pytest.raises(TypeError, match="log level"):
        kiwi_anyio.connect(url, subscriber_error_log_level=True)


@pytest.mark.parametrize("pattern", ["task", "rpc"])
async def test_an_undecodable_message_is_logged_once_with_its_identifiers(
    url: str, logs: pytest.LogCaptureFixture, pattern: str
) -> None:
    correlation_id, message_id = f"cid-{uuid.uuid4().hex}", uuid.uuid4().hex
    with anyio.fail_after(TIMEOUT):
        async with pair(url) as (sender, worker):
            if pattern == "task":
                await worker.add_task_subscriber(lambda _comm, task: task)
                exchange = sender.task_exchange
                routing_key = queue = sender.task_queue_name
                consumer = f"task queue {queue!r}"
                identifier = None
            else:
                identifier = f"rpc-{uuid.uuid4().hex[:8]}"
                await worker.add_rpc_subscriber(lambda _comm, msg: msg, identifier)
                exchange = sender.message_exchange
                routing_key = wire.rpc_routing_key(identifier)
                queue = f"{exchange}.rpc.{identifier}"
                consumer = f"RPC subscriber {identifier!r}"
            await sender._publisher.publish(
                b"{[: not yaml",
                exchange=exchange,
                routing_key=routing_key,
                properties=Properties(
                    content_type="application/x-yaml",
                    correlation_id=correlation_id,
                    message_id=message_id,
                ),
                mandatory=True,
                what="garbage",
            )
            with anyio.fail_after(10):
                while not [r for r in logs.records if "undecodable" in r.getMessage()]:
                    await anyio.sleep(0.01)
    about_it = [r for r in logs.records if getattr(r, "message_id", None) == message_id]
    (record,) = about_it  # once
    assert "undecodable" in record.getMessage()
    assert record.levelno == logging.WARNING
    fields = context(record)
    assert isinstance(fields["delivery_tag"], int)
    assert fields == {
        "messaging_consumer": consumer,
        "queue": queue,
        "identifier": identifier,
        "routing_key": routing_key,
        "correlation_id": correlation_id,
        "message_id": message_id,
        "delivery_tag": fields["delivery_tag"],
    }
