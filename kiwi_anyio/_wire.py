"""kiwiPy 0.9's wire format: names, queue arguments, body shapes and replies (pure).

See ``docs/differences-from-kiwipy.md``; every constant here is byte-compatible with kiwiPy.
"""

from __future__ import annotations

import os
import socket
import traceback
from collections.abc import Mapping
from typing import Any, Final

from .exceptions import RemoteException, TaskDeadLettered, UndecodableMessage

MESSAGE_EXCHANGE: Final = "kiwipy.messages"
TASK_EXCHANGE: Final = "kiwipy.tasks"
TASK_QUEUE: Final = "kiwipy.tasks"
TASK_MESSAGE_TTL: Final = 604800000  # 7 days: frozen by kiwiPy issue #60
RPC_MESSAGE_TTL: Final = 66000
BROADCAST_MESSAGE_TTL: Final = 66000
QUEUE_EXPIRES: Final = 60000
REPLY_QUEUE_EXPIRES: Final = 60000
TESTING_TASK_QUEUE_EXPIRES: Final = 10000
BROADCAST_ROUTING_KEY: Final = "[broadcast]"
RPC_PREFIX: Final = "[rpc]."

RESULT_KEY: Final = "result"
EXCEPTION_KEY: Final = "exception"
CANCELLED_KEY: Final = "cancelled"
PENDING_KEY: Final = "pending"
HOST_KEY: Final = "host"
# extra keys kiwiPy ignores
EXCEPTION_TYPE_KEY: Final = "exception_type"
TRACEBACK_KEY: Final = "traceback"


def rpc_routing_key(identifier: str) -> str:
    """The routing key of RPCs to ``identifier``."""
    return RPC_PREFIX + identifier


_HOST: dict[str, Any] | None = None


def _forget_host() -> None:
    global _HOST
    _HOST = None


if hasattr(os, "register_at_fork"):  # POSIX: a forked child has another pid
    os.register_at_fork(after_in_child=_forget_host)


def host_info() -> dict[str, Any]:
    """kiwiPy's ``host`` entry of task replies (looked up once per process)."""
    global _HOST
    if _HOST is None:
        _HOST = {"hostname": socket.gethostname(), "pid": os.getpid()}
    return dict(_HOST)


def result_reply(value: Any, *, with_host: bool = False) -> dict[str, Any]:
    """``{'result': value}`` (plus ``host`` for task replies)."""
    reply: dict[str, Any] = {RESULT_KEY: value}
    if with_host:
        reply[HOST_KEY] = host_info()
    return reply


def exception_reply(exc: BaseException, *, with_host: bool = False) -> dict[str, Any]:
    """``{'exception': str(exc)}`` plus the type and traceback, which kiwiPy ignores."""
    reply: dict[str, Any] = {
        EXCEPTION_KEY: str(exc),
        EXCEPTION_TYPE_KEY: type(exc).__name__,
        TRACEBACK_KEY: "".join(traceback.format_exception(exc)),
    }
    if with_host:
        reply[HOST_KEY] = host_info()
    return reply


def pending_reply() -> dict[str, Any]:
    """``{'pending': None}``: the result will follow in another reply."""
    return {PENDING_KEY: None}


def cancelled_reply(message: str | None = None) -> dict[str, Any]:
    """``{'cancelled': message}``."""
    return {CANCELLED_KEY: message}


def decode_task(body: Any) -> tuple[Any, bool]:
    """Unpack a task body ``(task, no_reply)`` (any 2-sequence, as kiwiPy accepts).

    Raises:
        UndecodableMessage: the body is not a 2-sequence.
    """
    if isinstance(body, list | tuple) and len(body) == 2:
        return body[0], bool(body[1])
    raise UndecodableMessage(f"a task message must be (task, no_reply); got {type(body).__name__}")


def decode_broadcast(body: Any) -> tuple[Any, Any, Any, Any]:
    """Unpack a broadcast body into ``(body, sender, subject, correlation_id)``."""
    if not isinstance(body, Mapping) or "body" not in body:
        raise UndecodableMessage("a broadcast message must be a mapping with a 'body' key")
    return body["body"], body.get("sender"), body.get("subject"), body.get("correlation_id")


def encode_broadcast(body: Any, sender: Any, subject: Any, correlation_id: Any) -> dict[str, Any]:
    """The broadcast body kiwiPy sends."""
    return {"body": body, "sender": sender, "subject": subject, "correlation_id": correlation_id}


PENDING: Final = object()
CANCELLED: Final = object()


def parse_reply(reply: Any) -> tuple[object, Any]:
    """Interpret a reply as kiwiPy does (cancelled > exception > result > pending).

    Returns:
        ``(CANCELLED, message)``, ``(PENDING, None)``, ``(RESULT_KEY, value)``; an exception
        reply comes back as ``(EXCEPTION_KEY, RemoteException)``.

    Raises:
        UndecodableMessage: not a reply kiwiPy could have sent.
    """
    if not isinstance(reply, Mapping):
        raise UndecodableMessage(f"a reply must be a mapping; got {type(reply).__name__}")
    if CANCELLED_KEY in reply:
        return CANCELLED, reply[CANCELLED_KEY]
    if EXCEPTION_KEY in reply:
        remote_type = reply.get(EXCEPTION_TYPE_KEY)
        remote_tb = reply.get(TRACEBACK_KEY)
        # a task set aside as poison comes back as its own type (a RemoteException too)
        cls = TaskDeadLettered if remote_type == TaskDeadLettered.__name__ else RemoteException
        return EXCEPTION_KEY, cls(
            reply[EXCEPTION_KEY],
            remote_type if isinstance(remote_type, str) else None,
            remote_tb if isinstance(remote_tb, str) else None,
        )
    if RESULT_KEY in reply:
        return RESULT_KEY, reply[RESULT_KEY]
    if PENDING_KEY in reply:
        return PENDING, None
    raise UndecodableMessage(f"unknown reply keys {sorted(map(str, reply))}")
