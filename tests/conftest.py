"""Fixtures shared by the whole suite: the anyio backends and the private RabbitMQ broker.

The broker comes from ``python -m kiwi_anyio.testing.rabbitmq -- pytest ...`` (what
``scripts/test`` runs) through the ``KIWI_ANYIO_TEST_*`` environment variables; without them
(plain ``pytest``) this session starts a broker of its own and stops it at the end. Broker tests
are never skipped: if no broker can be started, the fixtures fail with the broker's log tail.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kiwi_anyio.testing.rabbitmq import BrokerInfo, RabbitMQBroker


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
