"""The RabbitMQ 4 broker (Debian 13's 4.0.x, configured like 4.3's defaults) and what it refuses.

``rabbitmq4_broker`` (tests/conftest.py) is the broker: the one ``scripts/test`` starts with
``--rabbitmq4`` or ``--also-rabbitmq4``, else one this session starts from the cached Debian tree.
These tests prove that the broker is a 4.x one and that its configuration took effect: a queue
that is neither durable nor exclusive is refused with 541 INTERNAL_ERROR, as RabbitMQ 4.3 does
by default. Tests of what the library declares there belong here too (``rabbitmq4_broker.ctl(
"list_queues", ...)`` lists the queues and their properties).
"""

from __future__ import annotations

import uuid

import anyio
import pytest

from kiwi_anyio.exceptions import ConnectionClosed
from kiwi_anyio.protocol import connect
from kiwi_anyio.testing.rabbitmq import RABBITMQ_4_3_DEFAULTS, RabbitMQBroker

pytestmark = pytest.mark.broker

TIMEOUT = 30


def unique(prefix: str) -> str:
    """A queue name no other test uses."""
    return f"kiwi-test-rmq4-{prefix}-{uuid.uuid4().hex[:12]}"


def test_broker_is_rabbitmq_4(rabbitmq4_broker: RabbitMQBroker) -> None:
    version = rabbitmq4_broker.ctl("version").strip()
    assert version.split(".")[0] == "4", version
    assert rabbitmq4_broker.server_version == version
    assert rabbitmq4_broker.root is not None


def test_config_has_the_4_3_defaults(rabbitmq4_broker: RabbitMQBroker) -> None:
    config = (rabbitmq4_broker.home / "rabbitmq.conf").read_text().splitlines()
    for line in RABBITMQ_4_3_DEFAULTS:
        assert line in config


@pytest.mark.anyio
async def test_transient_non_exclusive_queue_is_denied(rabbitmq4_broker: RabbitMQBroker) -> None:
    name = unique("transient")
    with anyio.fail_after(TIMEOUT):
        # 541 is a hard error: the broker closes the whole connection, not just the channel.
        with pytest.raises(ConnectionClosed) as info:
            async with connect(rabbitmq4_broker.url) as conn, conn.channel() as ch:
                await ch.queue_declare(name, durable=False, exclusive=False)
        assert info.value.reply_code == 541
        assert "transient_nonexcl_queues" in info.value.reply_text
        # What 4.3 recommends instead is accepted: an exclusive queue, or a durable one.
        async with connect(rabbitmq4_broker.url) as conn, conn.channel() as ch:
            await ch.queue_declare(unique("exclusive"), exclusive=True)
            durable = unique("durable")
            await ch.queue_declare(durable, durable=True, arguments={"x-expires": 60_000})
            await ch.queue_delete(durable)
    assert name not in rabbitmq4_broker.ctl("list_queues", "name").split()
