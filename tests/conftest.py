"""Fixtures shared by the whole suite: the anyio backends and the private RabbitMQ broker.

The broker comes from ``python -m kiwi_anyio.testing.rabbitmq -- pytest ...`` (what
``scripts/test`` runs) through the ``KIWI_ANYIO_TEST_*`` environment variables; without them
(plain ``pytest``) this session starts a broker of its own and stops it at the end. Broker tests
are never skipped: if no broker can be started, the fixtures fail with the broker's log tail.

The RabbitMQ 4 broker (``rabbitmq4_broker``) is, in this order: the second broker of
``python -m kiwi_anyio.testing.rabbitmq --also-rabbitmq4 ROOT`` (``KIWI_ANYIO_TEST4_*``), the
main test broker when that is a RabbitMQ 4 one (``--rabbitmq4 ROOT``), or one this session starts
from the tree of ``ensure_rabbitmq4_root`` (``KIWI_ANYIO_RABBITMQ4_ROOT`` names the tree;
default ``/var/cache/kiwi-anyio/rabbitmq4-trixie``, built there when missing).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiwi_anyio.testing.rabbitmq import (
    DEFAULT_RABBITMQ4_ROOT,
    ENV4_PREFIX,
    BrokerInfo,
    RabbitMQBroker,
    ensure_rabbitmq4_root,
)


@pytest.fixture(params=[pytest.param("asyncio", id="asyncio"), pytest.param("trio", id="trio")])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every ``@pytest.mark.anyio`` test on asyncio and on trio."""
    return str(request.param)


@pytest.fixture(scope="session")
def _own_broker() -> Iterator[RabbitMQBroker | None]:
    """The broker this session started, or None when the environment names one."""
    if BrokerInfo.from_env() is not None:
        yield None
        return
    broker = RabbitMQBroker()
    broker.start()  # BrokerStartError (with the log tail) fails every broker test
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def rabbitmq(_own_broker: RabbitMQBroker | None) -> BrokerInfo:
    """Where the test broker is: ``url``, ``tls_url``, ``ca``, ``client_cert``, ``client_key``."""
    if _own_broker is not None:
        return _own_broker.info()
    info = BrokerInfo.from_env()
    assert info is not None
    return info


@pytest.fixture(scope="session")
def broker_url(rabbitmq: BrokerInfo) -> str:
    """``amqp://guest:guest@127.0.0.1:PORT/`` of the test broker."""
    return rabbitmq.url


@pytest.fixture(scope="session")
def broker(_own_broker: RabbitMQBroker | None, rabbitmq: BrokerInfo) -> RabbitMQBroker:
    """A handle on the test broker for ``ctl()``, ``restart()``, ``kill()``, ``log_tail()``.

    Tests that restart or kill it must leave it running (``start()`` after ``kill()``).
    """
    if _own_broker is not None:
        return _own_broker
    if rabbitmq.home is None:
        raise RuntimeError(
            "KIWI_ANYIO_TEST_URL is set but KIWI_ANYIO_TEST_BROKER_HOME is not: "
            "no handle on the broker (run the tests with scripts/test)"
        )
    return RabbitMQBroker.attach(rabbitmq.home)


@pytest.fixture(scope="session")
def rabbitmq4_root() -> Path:
    """The Debian 13 tree with RabbitMQ 4 (``KIWI_ANYIO_RABBITMQ4_ROOT``, else the default
    cache), built by :func:`ensure_rabbitmq4_root` when missing (about half a minute)."""
    info = BrokerInfo.from_env(prefix=ENV4_PREFIX) or BrokerInfo.from_env()
    if info is not None and info.root is not None:
        return Path(info.root)
    return ensure_rabbitmq4_root(
        os.environ.get("KIWI_ANYIO_RABBITMQ4_ROOT") or DEFAULT_RABBITMQ4_ROOT
    )


@pytest.fixture(scope="session")
def rabbitmq4_broker(rabbitmq4_root: Path) -> Iterator[RabbitMQBroker]:
    """A RabbitMQ 4 broker configured like 4.3's defaults, for ``ctl()``, ``url``, ``info()``.

    It refuses transient non-exclusive queues and global QoS
    (:data:`~kiwi_anyio.testing.rabbitmq.RABBITMQ_4_3_DEFAULTS`). Tests must leave it running.
    """
    for info in (BrokerInfo.from_env(prefix=ENV4_PREFIX), BrokerInfo.from_env()):
        if info is not None and info.root is not None and info.home is not None:
            yield RabbitMQBroker.attach(info.home)
            return
    broker = RabbitMQBroker.rabbitmq4(rabbitmq4_root)
    broker.start()  # BrokerStartError (with the log tail) fails every test using it
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def rabbitmq4_url(rabbitmq4_broker: RabbitMQBroker) -> str:
    """``amqp://guest:guest@127.0.0.1:PORT/`` of the RabbitMQ 4 broker."""
    return rabbitmq4_broker.url
