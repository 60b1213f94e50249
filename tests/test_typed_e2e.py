"""Typed messages and typed remote errors end to end, through a communicator on memory://
and on RabbitMQ.

The user-visible behaviour of issue #17 with the public API only.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypedDict

import anyio
import msgspec
import pydantic
import pytest

import kiwi_anyio
from kiwi_anyio import InvalidMessage, RemoteException, memory, register_remote_error
from kiwi_anyio.testing.pytest_plugin import private_names
from kiwi_anyio.typed import unregister_remote_error

pytestmark = pytest.mark.anyio

TIMEOUT = 10


class PydanticOrder(pydantic.BaseModel):
    name: str
    quantity: int


class MsgspecOrder(msgspec.Struct):
    name: str
    quantity: int


@dataclasses.dataclass
class DataclassOrder:
    name: str
    quantity: int


class TypedDictOrder(TypedDict):
    name: str
    quantity: int


MODELS: list[Any] = [PydanticOrder, MsgspecOrder, DataclassOrder, TypedDictOrder]
MODEL_IDS = ["pydantic", "msgspec", "dataclass", "typeddict"]


def order(model: Any, name: str = "apples", quantity: int = 3) -> Any:
    if model is TypedDictOrder:
        return {"name": name, "quantity": quantity}
    return model(name=name, quantity=quantity)


def sent(model: Any) -> Any:
    """What the sender sends: a model; for a TypedDict, a dict with a key it does not declare
    (dropped on the typed side, as pydantic and msgspec drop unknown fields)."""
    if model is TypedDictOrder:
        return {"name": "apples", "quantity": 3, "undeclared": True}
    return order(model)


def more(model: Any, received: list[Any], *, is_async: bool) -> Callable[..., Any]:
    """A subscriber ``(comm, msg: model)`` that records ``msg`` and returns one more of it."""

    def bump(msg: Any) -> Any:
        received.append(msg)
        if isinstance(msg, dict):
            return dict(msg, quantity=msg["quantity"] + 1)
        return order(model, msg.name, msg.quantity + 1)

    if is_async:

        async def handle_async(comm: Any, msg: Any) -> Any:
            return bump(msg)

        handle_async.__annotations__["msg"] = model
        return handle_async

    def handle(comm: Any, msg: Any) -> Any:
        return bump(msg)

    handle.__annotations__["msg"] = model
    return handle


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.broker)])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each test on the memory:// broker (one of its own) and on the test RabbitMQ."""
    if request.param == "rabbitmq":
        yield str(request.getfixturevalue("broker_url"))
        return
    name = f"typed-{uuid.uuid4().hex[:12]}"
    yield f"memory://{name}"
    memory.reset(name)


@pytest.fixture
def connect(url: str) -> Callable[[], Any]:
    """``connect()`` opens a communicator on ``url`` with exchange and queue names private to
    the test (the same for every communicator of the test)."""
    options = private_names("typed")

    def open_communicator() -> Any:
        return kiwi_anyio.connect(url, **options)

    return open_communicator


def check_received(model: Any, received: list[Any]) -> None:
    (msg,) = received
    if model is TypedDictOrder:
        assert msg == {"name": "apples", "quantity": 3}
    else:
        assert isinstance(msg, model)
        assert (msg.name, msg.quantity) == ("apples", 3)


# --------------------------------------------------------------------------- typed messages


@pytest.mark.parametrize("is_async", [True, False], ids=["async", "sync"])
@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
async def test_a_task_round_trip_with_a_model(
    connect: Callable[[], Any], model: Any, is_async: bool
) -> None:
    received: list[Any] = []
    with anyio.fail_after(TIMEOUT):
        async with connect() as comm:
            await comm.add_task_subscriber(more(model, received, is_async=is_async))
            future = await comm.task_send(sent(model))  # the sender passes a model
            assert future is not None
            assert await future == {"name": "apples", "quantity": 4}  # plain data comes back
    check_received(model, received)


@pytest.mark.parametrize("is_async", [True, False], ids=["async", "sync"])
@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
async def test_an_rpc_round_trip_with_a_model(
    connect: Callable[[], Any], model: Any, is_async: bool
) -> None:
    received: list[Any] = []
    with anyio.fail_after(TIMEOUT):
        async with connect() as server, connect() as client:
            await server.add_rpc_subscriber(more(model, received, is_async=is_async), "orders")
            future = await client.rpc_send("orders", sent(model))
            assert await future == {"name": "apples", "quantity": 4}
    check_received(model, received)


@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
async def test_a_typed_broadcast_subscriber(connect: Callable[[], Any], model: Any) -> None:
    received: list[Any] = []
    got = anyio.Event()

    async def on_order(comm: Any, body: Any, sender: Any, subject: Any, cid: Any) -> None:
        received.append(body)
        assert (sender, subject) == ("shop", "orders.new")
        got.set()

    on_order.__annotations__["body"] = model
    with anyio.fail_after(TIMEOUT):
        async with connect() as comm:
            await comm.add_broadcast_subscriber(
                kiwi_anyio.BroadcastFilter(on_order, subject="orders.*")
            )
            await comm.broadcast_send(sent(model), sender="shop", subject="orders.new")
            await got.wait()
    check_received(model, received)


@pytest.mark.parametrize("model", [PydanticOrder, MsgspecOrder, DataclassOrder], ids=MODEL_IDS[:3])
async def test_the_wire_carries_plain_data(connect: Callable[[], Any], model: Any) -> None:
    """A subscriber that asks for no type (as a kiwiPy peer) gets a dict from a model sender."""
    received: list[Any] = []

    def plain(comm: Any, msg: Any) -> Any:
        received.append(msg)
        return msg

    with anyio.fail_after(TIMEOUT):
        async with connect() as comm:
            await comm.add_rpc_subscriber(plain, "plain")
            assert await (await comm.rpc_send("plain", order(model))) == order(TypedDictOrder)
    assert received == [{"name": "apples", "quantity": 3}]
    assert type(received[0]) is dict


class Counted(pydantic.BaseModel):
    """Counts its validations: one per delivery of a message."""

    quantity: int

    @pydantic.model_validator(mode="before")
    @classmethod
    def count(cls, data: Any) -> Any:
        with COUNT_LOCK:
            VALIDATIONS.append(data)
        return data


VALIDATIONS: list[Any] = []
COUNT_LOCK = threading.Lock()


async def test_an_invalid_task_gives_invalid_message_and_is_not_redelivered(
    connect: Callable[[], Any],
) -> None:
    handled: list[int] = []

    async def worker(comm: Any, msg: Counted) -> int:
        handled.append(msg.quantity)
        return msg.quantity * 2

    VALIDATIONS.clear()
    with anyio.fail_after(TIMEOUT):
        async with connect() as comm:
            await comm.add_task_subscriber(worker)
            future = await comm.task_send({"quantity": "many"})
            assert future is not None
            with pytest.raises(InvalidMessage, match="quantity") as info:
                await future
            assert "valid integer" in str(info.value)
            assert isinstance(info.value, RemoteException)
            # the worker keeps serving
            future = await comm.task_send({"quantity": 2})
            assert future is not None
            assert await future == 4
            await anyio.sleep(0.3)  # time for a redelivery, if there were one
    assert handled == [2]
    assert VALIDATIONS == [{"quantity": "many"}, {"quantity": 2}]


@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
async def test_an_invalid_rpc_gives_invalid_message_naming_the_field(
    connect: Callable[[], Any], model: Any
) -> None:
    received: list[Any] = []
    with anyio.fail_after(TIMEOUT):
        async with connect() as comm:
            await comm.add_rpc_subscriber(more(model, received, is_async=True), "orders")
            with pytest.raises(InvalidMessage, match=r"invalid \w+Order: .*quantity"):
                await (await comm.rpc_send("orders", {"name": "apples"}))
            assert await (await comm.rpc_send("orders", order(model))) == order(
                TypedDictOrder, quantity=4
            )
    assert len(received) == 1


async def test_a_plain_subscriber_still_gets_plain_values(connect: Callable[[], Any]) -> None:
    """No annotation, or a plain one: as today (this already passes unwired)."""

    def double(comm: Any, msg: int) -> int:
        return msg * 2

    with anyio.fail_after(TIMEOUT):
        async with connect() as comm:
            await comm.add_task_subscriber(double)
            future = await comm.task_send(21)
            assert future is not None
            assert await future == 42


# --------------------------------------------------------------------------- typed remote errors


class OutOfStock(Exception):
    """An application error with constructor arguments."""

    def __init__(self, sku: str, left: int) -> None:
        super().__init__(f"only {left} {sku} left")
        self.sku = sku


class NotRegistered(Exception):
    pass


@pytest.fixture
def registered() -> Iterator[type[OutOfStock]]:
    register_remote_error(OutOfStock)
    yield OutOfStock
    unregister_remote_error(OutOfStock)


async def raise_out_of_stock(comm: Any, msg: Any) -> None:
    raise OutOfStock(msg, 2)


@pytest.mark.parametrize("via", ["task", "rpc"])
async def test_a_registered_error_comes_back_as_its_type(
    connect: Callable[[], Any], registered: type[OutOfStock], via: str
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect() as comm:
            if via == "task":
                await comm.add_task_subscriber(raise_out_of_stock)
                future = await comm.task_send("pears")
                assert future is not None
            else:
                await comm.add_rpc_subscriber(raise_out_of_stock, "stock")
                future = await comm.rpc_send("stock", "pears")
            with pytest.raises(OutOfStock, match="only 2 pears left") as info:
                await future
    assert isinstance(info.value, RemoteException)  # code catching RemoteException still works
    assert info.value.remote_type == "OutOfStock"
    assert "raise OutOfStock" in (info.value.remote_traceback or "")


@pytest.mark.parametrize("via", ["task", "rpc"])
async def test_an_unregistered_error_stays_a_remote_exception(
    connect: Callable[[], Any], registered: type[OutOfStock], via: str
) -> None:
    """As today (this already passes unwired)."""

    async def fail(comm: Any, msg: Any) -> None:
        raise NotRegistered("nope")

    with anyio.fail_after(TIMEOUT):
        async with connect() as comm:
            if via == "task":
                await comm.add_task_subscriber(fail)
                future = await comm.task_send("x")
                assert future is not None
            else:
                await comm.add_rpc_subscriber(fail, "fail")
                future = await comm.rpc_send("fail", "x")
            with pytest.raises(RemoteException, match="nope") as info:
                await future
    assert type(info.value) is RemoteException
    assert info.value.remote_type == "NotRegistered"


# --------------------------------------------------------------------------- with a kiwiPy peer
# (the harness of test_kiwipy_interop.py: kiwiPy 0.9 in its own process and virtualenv)


def total(comm: Any, order: PydanticOrder) -> PydanticOrder:
    return order.model_copy(update={"quantity": order.quantity + 1})


@pytest.mark.broker
async def test_a_kiwipy_caller_sends_and_gets_plain_data(broker_url: str) -> None:
    from tests.test_kiwipy_interop import TEST_TIMEOUT, Names, kiwi_comm, kiwipy_peer

    names = Names.unique()
    with anyio.fail_after(TEST_TIMEOUT):
        async with kiwi_comm(broker_url, names) as comm:
            await comm.add_rpc_subscriber(total, "total")
            async with kiwipy_peer(broker_url, names, "client") as peer:
                result = await peer.result("rpc_send", recipient="total", msg=order(TypedDictOrder))
                assert result == ({"name": "apples", "quantity": 4}, 0)
                # an invalid body: kiwiPy ignores the header, its RemoteException has the text
                reply = await peer.command("rpc_send", recipient="total", msg={"name": "x"})
                assert not reply["ok"]
                assert reply["error"] == "kiwipy.exceptions.RemoteException"
                assert reply["message"].startswith("invalid PydanticOrder: quantity: ")


@pytest.mark.broker
async def test_a_model_sent_to_a_kiwipy_worker_arrives_as_a_dict(broker_url: str) -> None:
    from tests.test_kiwipy_interop import TEST_TIMEOUT, Names, kiwi_comm, kiwipy_peer

    names = Names.unique()
    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            kiwipy_peer(broker_url, names, "serve") as peer,
            kiwi_comm(broker_url, names) as comm,
        ):
            sent_order = MsgspecOrder("apples", 3)
            assert await (await comm.rpc_send("echo", sent_order)) == order(TypedDictOrder)
            (event,) = await peer.wait_kind("rpc", 1)
            assert event["msg"] == {"name": "apples", "quantity": 3}


@pytest.mark.broker
async def test_a_kiwipy_workers_errors_stay_remote_exceptions(broker_url: str) -> None:
    """kiwiPy sends no type header: even a registered type arrives as today (passes unwired)."""
    from tests.test_kiwipy_interop import TEST_TIMEOUT, Names, kiwi_comm, kiwipy_peer

    register_remote_error(RuntimeError)  # what the peer's `fail` raises
    try:
        names = Names.unique()
        with anyio.fail_after(TEST_TIMEOUT):
            async with (
                kiwipy_peer(broker_url, names, "serve") as peer,
                kiwi_comm(broker_url, names) as comm,
            ):
                with pytest.raises(RemoteException, match="nope") as info:
                    await (await comm.rpc_send("fail", "x"))
                assert type(info.value) is RemoteException
                assert info.value.remote_type is None  # kiwiPy sends only the text
                assert len(await peer.wait_kind("rpc", 1)) == 1
    finally:
        unregister_remote_error(RuntimeError)
