"""What the thread and the asyncio compat communicators share: connection parameters in
kiwiPy's forms, kiwiPy's arguments mapped onto :class:`kiwi_anyio.Communicator`'s, and
subscribers called on the communicator's event loop, as kiwiPy calls them."""

from __future__ import annotations

import functools
import inspect
import urllib.parse
from collections.abc import Callable
from typing import Any

from ....communicator import DEFAULT_URL, Communicator
from . import defaults

__all__ = ["make_communicator", "on_loop", "url_from_params"]


def url_from_params(connection_params: Any) -> str:
    """kiwiPy's ``connection_params`` as a URL.

    Accepted: a URL string; a dict of ``aio_pika.connect_robust`` keyword arguments, either
    ``{'url': ...}`` or ``host``/``port``/``login``/``password``/``virtualhost``/``ssl``;
    ``None`` (kiwiPy's default, ``amqp://guest:guest@127.0.0.1/``); an aio-pika connection
    (kiwiPy's ``RmqTaskQueue`` and ``RmqTaskPublisher`` take one), or any object with a
    ``url`` attribute: its URL, on which the compat layer opens a connection of its own (the
    aio-pika connection itself is not used). Other keys (aio-pika's ``timeout``,
    ``client_properties``...) are ignored.
    """
    if connection_params is None:
        return DEFAULT_URL
    if isinstance(connection_params, str):
        return connection_params
    url = getattr(connection_params, "url", None)
    if url is not None and not isinstance(connection_params, dict):
        return str(url)  # an aio-pika connection: its yarl.URL, with the password
    if isinstance(connection_params, dict):
        url = connection_params.get("url")
        if url:
            return str(url)
        scheme = "amqps" if connection_params.get("ssl") else "amqp"
        login = urllib.parse.quote(str(connection_params.get("login", "guest")), safe="")
        password = urllib.parse.quote(str(connection_params.get("password", "guest")), safe="")
        host = connection_params.get("host", "127.0.0.1")
        port = connection_params.get("port", 5671 if scheme == "amqps" else 5672)
        vhost = urllib.parse.quote(str(connection_params.get("virtualhost", "/")), safe="")
        return f"{scheme}://{login}:{password}@{host}:{port}/{vhost}"
    raise TypeError(
        "connection_params must be a URL, a dict, a connection with a url, or None, not "
        f"{connection_params!r}"
    )


def make_communicator(
    connection_params: Any,
    *,
    message_exchange: str,
    queue_expires: int,
    task_exchange: str,
    task_queue: str,
    task_prefetch_size: int,
    task_prefetch_count: int,
    encoder: Callable[[Any], bytes] | None,
    decoder: Callable[[bytes], Any] | None,
    testing_mode: bool,
    options: dict[str, Any],
) -> Communicator:
    """A kiwi_anyio communicator from kiwiPy's constructor arguments.

    kiwiPy's defaults are kept where its clients depend on them: ``task_prefetch_count=0``
    (no limit), the YAML codec (decoded safely, see :mod:`.defaults`). ``options`` go to
    :class:`kiwi_anyio.Communicator` as they are (``request_timeout=``, ``reconnect=``...).
    """
    options = dict(options)
    codec = options.pop("codec", None) or defaults.codec_for(encoder, decoder)
    return Communicator(
        url_from_params(connection_params),
        message_exchange=message_exchange,
        queue_expires=queue_expires,
        task_exchange=task_exchange,
        task_queue=task_queue,
        task_prefetch_size=task_prefetch_size,
        task_prefetch_count=task_prefetch_count,
        encoder=encoder,
        decoder=decoder,
        codec=codec,
        testing_mode=testing_mode,
        **options,
    )


def on_loop(subscriber: Callable[..., Any]) -> Callable[..., Any]:
    """Call a plain-function ``subscriber`` on the communicator's event loop, as kiwiPy does.

    kiwi_anyio runs plain functions in worker threads; kiwiPy calls every subscriber on its
    loop, one at a time, and its clients are written for that (plumpy schedules work on its
    own loop from there, and adds done-callbacks from that thread). A coroutine the function
    returns is awaited; a future it returns is followed (kiwiPy's "pending" replies).
    ``async def`` subscribers are left as they are.
    """
    if inspect.iscoroutinefunction(subscriber):
        return subscriber

    @functools.wraps(subscriber)
    async def call(*args: Any) -> Any:
        result = subscriber(*args)
        if inspect.iscoroutine(result):
            result = await result
        return result

    return call
