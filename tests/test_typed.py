"""kiwi_anyio.typed in isolation: typed subscribers, to_plain, the remote error registry.

The end-to-end behaviour (through a communicator) is in test_typed_e2e.py.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import inspect
import logging
import os
import pickle
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Literal, NotRequired, TypedDict

import anyio
import msgspec
import pydantic
import pytest

from kiwi_anyio import (
    BroadcastFilter,
    InvalidMessage,
    RemoteException,
    register_remote_error,
    typed,
)
from kiwi_anyio.typed import (
    ERROR_BASES_HEADER,
    ERROR_TYPE_HEADER,
    adapt_subscriber,
    rebuild_remote_error,
    remote_error_headers,
    to_plain,
    unregister_remote_error,
)
from kiwi_anyio.typed import _errors as typed_errors

# --------------------------------------------------------------------------- the four model kinds
# (at module level: the annotations of this module are strings, resolved from its globals)


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
KINDS: list[typed.SubscriberKind] = ["task", "rpc", "broadcast"]
GOOD = {"name": "apples", "quantity": 3}


def typed_subscriber(model: Any, *, is_async: bool, calls: list[Any]) -> Callable[..., Any]:
    """A subscriber ``(comm, msg: model, *rest)`` that records what it got and returns it."""
    if is_async:

        async def handle_async(comm: Any, msg: Any, *rest: Any) -> Any:
            calls.append(msg)
            return msg

        handle_async.__annotations__["msg"] = model
        return handle_async

    def handle(comm: Any, msg: Any, *rest: Any) -> Any:
        calls.append(msg)
        return msg

    handle.__annotations__["msg"] = model
    return handle


async def call(subscriber: Callable[..., Any], *args: Any) -> Any:
    """As the communicator does: await an ``async`` subscriber, call a plain one."""
    if inspect.iscoroutinefunction(subscriber):
        return await subscriber(*args)
    return subscriber(*args)


def args_for(kind: str, body: Any) -> tuple[Any, ...]:
    return (None, body) if kind != "broadcast" else (None, body, "sender", "subject", "cid")


# --------------------------------------------------------------------------- plain subscribers


def no_annotation(comm, msg):  # type: ignore[no-untyped-def]
    return msg


def any_annotation(comm: Any, msg: Any) -> Any:
    return msg


def int_annotation(comm: Any, msg: int) -> int:
    return msg


def dict_annotation(comm: Any, msg: dict[str, Any]) -> Any:
    return msg


def list_annotation(comm: Any, msg: list[int]) -> Any:
    return msg


async def async_plain(comm: Any, msg: str) -> str:
    return msg


def broadcast_plain(comm: Any, body: Any, sender: Any, subject: Any, correlation_id: Any) -> Any:
    return body


def only_comm(comm: Any, *args: Any) -> Any:
    return args


@pytest.mark.parametrize(
    "subscriber",
    [
        no_annotation,
        any_annotation,
        int_annotation,
        dict_annotation,
        list_annotation,
        async_plain,
        broadcast_plain,
        only_comm,
        lambda comm, msg: msg,
        print,
        BroadcastFilter(broadcast_plain, subject="a.*"),
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_a_plain_subscriber_is_returned_unchanged(subscriber: Any, kind: Any) -> None:
    assert adapt_subscriber(subscriber, kind) is subscriber


def test_an_unresolvable_annotation_leaves_the_subscriber_unchanged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def handle(comm: Any, msg: NoSuchModel) -> None:  # type: ignore[name-defined]  # noqa: F821
        pass

    with caplog.at_level(logging.WARNING, logger="kiwi_anyio.typed"):
        assert adapt_subscriber(handle, "task") is handle
    assert "do not resolve" in caplog.text


def test_a_model_whose_annotations_do_not_resolve_fails_at_subscription() -> None:
    @dataclasses.dataclass
    class Broken:
        value: NoSuchType  # type: ignore[name-defined]  # noqa: F821

    def handle(comm: Any, msg: Any) -> None:
        pass

    handle.__annotations__["msg"] = Broken
    with pytest.raises(TypeError, match="cannot resolve the annotations of"):
        adapt_subscriber(handle, "task")


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind must be"):
        adapt_subscriber(no_annotation, "stream")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- typed subscribers


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
def test_a_typed_subscriber_receives_the_model_and_returns_plain_data(
    model: Any, is_async: bool, kind: Any
) -> None:
    calls: list[Any] = []
    subscriber = typed_subscriber(model, is_async=is_async, calls=calls)
    adapted = adapt_subscriber(subscriber, kind)
    assert adapted is not subscriber
    assert inspect.iscoroutinefunction(adapted) is is_async
    assert adapted.__name__ == subscriber.__name__
    body = dict(GOOD, unknown="ignored")  # unknown keys are dropped, as pydantic/msgspec do

    result = anyio.run(call, adapted, *args_for(kind, body))

    (received,) = calls
    if model is TypedDictOrder:
        assert received == GOOD
    else:
        assert isinstance(received, model)
        assert (received.name, received.quantity) == ("apples", 3)
    assert result == GOOD
    assert type(result) is dict


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
@pytest.mark.parametrize(
    ("body", "field", "problem"),
    [
        ({"name": "apples", "quantity": "many"}, "quantity", "int"),
        ({"name": "apples"}, "quantity", "required"),
        ({"name": 7, "quantity": 3}, "name", "str"),
    ],
    ids=["wrong-type", "missing", "wrong-name"],
)
def test_an_invalid_body_raises_invalid_message_naming_the_field(
    model: Any, is_async: bool, body: Any, field: str, problem: str
) -> None:
    calls: list[Any] = []
    adapted = adapt_subscriber(typed_subscriber(model, is_async=is_async, calls=calls), "rpc")
    with pytest.raises(InvalidMessage) as info:
        anyio.run(call, adapted, None, body)
    assert calls == []  # the subscriber never ran
    text = str(info.value)
    assert text.startswith(f"invalid {model.__name__}: ")
    assert field in text
    assert problem in text.lower()
    assert isinstance(info.value, RemoteException)
    assert info.value.errors  # (location, problem) pairs
    assert any(field in f"{loc} {what}" for loc, what in info.value.errors)


@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
@pytest.mark.parametrize("body", [5, "text", None, [1, 2]])
def test_a_body_that_is_not_a_mapping_is_invalid(model: Any, body: Any) -> None:
    adapted = adapt_subscriber(typed_subscriber(model, is_async=False, calls=[]), "task")
    with pytest.raises(InvalidMessage, match=f"invalid {model.__name__}"):
        adapted(None, body)


def test_an_optional_model_accepts_none() -> None:
    def handle(comm: Any, msg: PydanticOrder | None) -> Any:
        return msg

    adapted = adapt_subscriber(handle, "task")
    assert adapted is not handle
    assert adapted(None, None) is None
    assert adapted(None, GOOD) == GOOD
    with pytest.raises(InvalidMessage):
        adapted(None, {"name": "x"})


def test_a_broadcast_subscriber_gets_the_other_arguments_unchanged() -> None:
    got: list[Any] = []

    def handle(comm: Any, body: DataclassOrder, sender: Any, subject: Any, cid: Any) -> None:
        got.append((comm, body, sender, subject, cid))

    adapt_subscriber(handle, "broadcast")("comm", GOOD, "bob", "orders.new", "42")
    assert got == [("comm", DataclassOrder("apples", 3), "bob", "orders.new", "42")]


def test_a_broadcast_filter_around_a_typed_subscriber() -> None:
    got: list[Any] = []

    def handle(comm: Any, body: MsgspecOrder, sender: Any, subject: Any, cid: Any) -> None:
        got.append(body)

    subscriber = BroadcastFilter(handle, subject="orders.*")
    adapted = adapt_subscriber(subscriber, "broadcast")
    assert adapted is not subscriber
    # still a filter (the communicator tests it, then calls its subscriber)
    assert isinstance(adapted, BroadcastFilter)
    assert adapted.__name__ == "BroadcastFilter"
    assert repr(adapted) == repr(subscriber)
    assert adapted.subscriber is not handle
    assert adapted.is_filtered("bob", "weather.today")
    # filtered out: not even validated
    assert adapted(None, "not an order", "bob", "weather.today", None) is None
    adapted(None, GOOD, "bob", "orders.new", None)
    assert got == [MsgspecOrder("apples", 3)]
    subscriber.add_subject_filter("weather.*")  # the filter's later changes apply
    assert not adapted.is_filtered("bob", "weather.today")
    with pytest.raises(InvalidMessage):
        adapted(None, "not an order", "bob", "weather.today", None)
    adapted.add_sender_filter("alice")  # and changes through the adapted one reach it
    assert subscriber.is_filtered("bob", "orders.new")


@pytest.mark.anyio
async def test_a_broadcast_filter_around_an_async_typed_subscriber() -> None:
    async def handle(comm: Any, body: PydanticOrder, sender: Any, subject: Any, cid: Any) -> Any:
        return body

    adapted = adapt_subscriber(BroadcastFilter(handle), "broadcast")
    assert isinstance(adapted, BroadcastFilter)
    assert inspect.iscoroutinefunction(adapted.subscriber)
    assert await adapted.subscriber(None, GOOD, None, None, None) == GOOD


def test_a_callable_object_and_a_bound_method() -> None:
    class Worker:
        async def __call__(self, comm: Any, msg: PydanticOrder) -> PydanticOrder:
            return msg.model_copy(update={"quantity": msg.quantity + 1})

        def handle(self, comm: Any, msg: DataclassOrder) -> DataclassOrder:
            return dataclasses.replace(msg, quantity=msg.quantity * 10)

    worker = Worker()
    adapted = adapt_subscriber(worker, "rpc")
    assert inspect.iscoroutinefunction(adapted)
    assert anyio.run(adapted, None, GOOD) == {"name": "apples", "quantity": 4}
    method = adapt_subscriber(worker.handle, "task")
    assert method(None, GOOD) == {"name": "apples", "quantity": 30}


def test_a_returned_future_or_plain_value_passes_through() -> None:
    sentinel = object()

    def handle(comm: Any, msg: DataclassOrder) -> Any:
        return sentinel if msg.quantity else [msg.name]

    adapted = adapt_subscriber(handle, "task")
    assert adapted(None, GOOD) is sentinel
    assert adapted(None, {"name": "x", "quantity": 0}) == ["x"]


# --------------------------------------------------------------------------- dataclass / TypedDict


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class Line:
    sku: str
    quantity: int
    price: float = 0.0


@dataclasses.dataclass
class Basket:
    owner: str
    lines: list[Line]
    colour: Colour = Colour.RED
    when: datetime.datetime | None = None
    day: datetime.date | None = None
    ident: uuid.UUID | None = None
    total: decimal.Decimal | None = None
    blob: bytes = b""
    pair: tuple[int, str] = (0, "")
    tags: set[str] = dataclasses.field(default_factory=set)
    labels: dict[str, int] = dataclasses.field(default_factory=dict)
    kind: Literal["retail", "wholesale"] = "retail"
    parent: Basket | None = None
    flag: bool = False


class Envelope(TypedDict):
    basket: Basket
    note: NotRequired[str]


def basket_handler(comm: Any, msg: Basket) -> Basket:
    return msg


def test_a_nested_dataclass_converts_and_round_trips() -> None:
    body = {
        "owner": "ann",
        "lines": [{"sku": "a", "quantity": 1, "price": 2}, {"sku": "b", "quantity": 2}],
        "colour": "blue",
        "when": "2024-05-06T07:08:09+00:00",
        "day": "2024-05-06",
        "ident": "12345678-1234-5678-1234-567812345678",
        "total": "12.50",
        "blob": "aGVsbG8=",
        "pair": [1, "x"],
        "tags": ["t"],
        "labels": {"k": 1},
        "kind": "wholesale",
        "parent": {"owner": "bob", "lines": []},
        "flag": True,
    }
    calls: list[Any] = []

    def handle(comm: Any, msg: Basket) -> Basket:
        calls.append(msg)
        return msg

    result = adapt_subscriber(handle, "task")(None, body)
    (basket,) = calls
    assert basket.lines == [Line("a", 1, 2.0), Line("b", 2)]
    assert type(basket.lines[0].price) is float
    assert basket.colour is Colour.BLUE
    assert basket.when == datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
    assert basket.day == datetime.date(2024, 5, 6)
    assert basket.ident == uuid.UUID(body["ident"])  # type: ignore[arg-type]
    assert basket.total == decimal.Decimal("12.50")
    assert basket.blob == b"hello"
    assert basket.pair == (1, "x")
    assert basket.tags == {"t"}
    assert basket.parent == Basket("bob", [])
    # back to plain data, as pydantic's JSON mode would (bytes stay bytes)
    assert result == to_plain(basket)
    assert result["lines"][0] == {"sku": "a", "quantity": 1, "price": 2.0}
    assert (result["when"], result["total"], result["blob"]) == (body["when"], "12.50", b"hello")
    assert (result["pair"], result["tags"], result["colour"]) == ([1, "x"], ["t"], "blue")


def test_native_values_from_a_yaml_or_msgpack_peer_are_accepted() -> None:
    when = datetime.datetime(2024, 1, 2, 3, 4)
    adapted = adapt_subscriber(lambda_free_basket_handler, "task")
    result = adapted(None, {"owner": "a", "lines": [], "when": when, "blob": b"raw"})
    assert result["when"] == when.isoformat() and result["blob"] == b"raw"


def lambda_free_basket_handler(comm: Any, msg: Basket) -> Basket:
    assert isinstance(msg.when, datetime.datetime)
    return msg


@pytest.mark.parametrize(
    ("body", "location", "problem"),
    [
        (
            {"owner": "a", "lines": [{"sku": "a", "quantity": 1}, {"sku": "b"}]},
            "lines[1].quantity",
            "field required",
        ),
        (
            {"owner": "a", "lines": [{"sku": "a", "quantity": True}]},
            "lines[0].quantity",
            "expected int, got bool",
        ),
        ({"owner": "a", "lines": "x"}, "lines", "expected list"),
        ({"owner": "a", "lines": [], "colour": "green"}, "colour", "expected Colour"),
        ({"owner": "a", "lines": [], "when": "yesterday"}, "when", "expected datetime"),
        ({"owner": "a", "lines": [], "kind": "resale"}, "kind", "expected one of"),
        ({"owner": "a", "lines": [], "pair": [1]}, "pair", "2 items"),
        ({"owner": "a", "lines": [], "labels": {"k": "v"}}, "labels.k", "expected int"),
        (
            {"owner": "a", "lines": [], "parent": {"owner": 1, "lines": []}},
            "parent.owner",
            "expected str",
        ),
        ({"owner": "a", "lines": [], "flag": 1}, "flag", "expected bool"),
        ({"owner": "a", "lines": [], "blob": "not base64!"}, "blob", "expected bytes"),
    ],
)
def test_dataclass_validation_names_the_location(body: Any, location: str, problem: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        adapt_subscriber(basket_handler, "task")(None, body)
    assert (location, info.value.errors[0][1]) == info.value.errors[0]
    assert info.value.errors[0][0] == location
    assert problem in info.value.errors[0][1]
    assert f"{location}: " in str(info.value)


def test_every_failing_field_is_reported_up_to_a_limit() -> None:
    body = {"owner": "a", "lines": [{"sku": i, "quantity": "x"} for i in range(20)]}
    with pytest.raises(InvalidMessage) as info:
        adapt_subscriber(basket_handler, "task")(None, body)
    assert len(info.value.errors) == 40
    assert str(info.value).endswith("... and 30 more")


def test_a_post_init_check_is_a_validation_error() -> None:
    @dataclasses.dataclass
    class Positive:
        value: int

        def __post_init__(self) -> None:
            if self.value <= 0:
                raise ValueError("value must be positive")

    def handle(comm: Any, msg: Any) -> Any:
        return msg

    handle.__annotations__["msg"] = Positive
    adapted = adapt_subscriber(handle, "task")
    assert adapted(None, {"value": 1}) == {"value": 1}
    with pytest.raises(InvalidMessage, match="invalid Positive: value must be positive"):
        adapted(None, {"value": 0})


def test_a_typeddict_with_a_nested_dataclass() -> None:
    def handle(comm: Any, msg: Envelope) -> Envelope:
        assert isinstance(msg["basket"], Basket)
        return msg

    adapted = adapt_subscriber(handle, "rpc")
    assert adapted(None, {"basket": {"owner": "a", "lines": []}})["basket"]["owner"] == "a"
    with pytest.raises(InvalidMessage, match=r"basket\.lines: field required"):
        adapted(None, {"basket": {"owner": "a"}, "note": "n"})


class PLine(pydantic.BaseModel):
    quantity: int


class PBasket(pydantic.BaseModel):
    lines: list[PLine]


class MLine(msgspec.Struct):
    quantity: int


class MBasket(msgspec.Struct):
    lines: list[MLine]


def test_a_msgspec_struct_that_does_not_resolve_fails_at_subscription() -> None:
    class Local(msgspec.Struct):
        line: MissingLine  # type: ignore[name-defined]  # noqa: F821

    def handle(comm: Any, msg: Any) -> None:
        pass

    handle.__annotations__["msg"] = Local
    with pytest.raises(TypeError, match="cannot resolve the annotations of"):
        adapt_subscriber(handle, "task")


def test_a_returned_container_of_models_is_converted() -> None:
    def handle(comm: Any, msg: DataclassOrder) -> Any:
        return {"orders": [msg, PydanticOrder(name="b", quantity=2)], "n": (1,)}

    assert adapt_subscriber(handle, "task")(None, GOOD) == {
        "orders": [GOOD, {"name": "b", "quantity": 2}],
        "n": [1],
    }


def test_pydantic_and_msgspec_errors_name_nested_locations() -> None:
    for model in (PBasket, MBasket):

        def handle(comm: Any, msg: Any) -> Any:
            return msg

        handle.__annotations__["msg"] = model
        with pytest.raises(InvalidMessage) as info:
            adapt_subscriber(handle, "task")(None, {"lines": [{"quantity": 1}, {"quantity": "x"}]})
        assert (
            info.value.errors[0][0] == "lines.1.quantity"
            if model is PBasket
            else "lines[1].quantity"
        )
        assert "lines" in str(info.value) and "quantity" in str(info.value)


# --------------------------------------------------------------------------- to_plain


@pytest.mark.parametrize(
    "value", ["s", 1, 1.5, True, None, b"b", {"a": [1]}, [1, {"b": 2}], (1, 2)]
)
def test_to_plain_returns_plain_values_as_they_are(value: Any) -> None:
    assert to_plain(value) is value


def test_to_plain_converts_the_models() -> None:
    assert to_plain(PydanticOrder(name="a", quantity=1)) == {"name": "a", "quantity": 1}
    assert to_plain(MsgspecOrder("a", 1)) == {"name": "a", "quantity": 1}
    assert to_plain(DataclassOrder("a", 1)) == {"name": "a", "quantity": 1}
    stamp = datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC)
    ident = uuid.uuid4()
    assert to_plain(
        Basket(
            "o",
            [Line("x", 1)],
            colour=Colour.BLUE,
            when=stamp,
            ident=ident,
            total=decimal.Decimal("1.5"),
            tags={"t"},
            pair=(1, "a"),
        )
    ) == {
        "owner": "o",
        "lines": [{"sku": "x", "quantity": 1, "price": 0.0}],
        "colour": "blue",
        "when": stamp.isoformat(),
        "day": None,
        "ident": str(ident),
        "total": "1.5",
        "blob": b"",
        "pair": [1, "a"],
        "tags": ["t"],
        "labels": {},
        "kind": "retail",
        "parent": None,
        "flag": False,
    }


def test_to_plain_leaves_other_objects_alone() -> None:
    thing = object()
    assert to_plain(thing) is thing
    assert to_plain(DataclassOrder) is DataclassOrder  # the class, not an instance
    assert to_plain(Colour.RED) is Colour.RED  # only inside a dataclass


def test_the_module_imports_neither_pydantic_nor_msgspec() -> None:
    code = (
        "import sys, kiwi_anyio, kiwi_anyio.typed as t\n"
        "def f(comm, msg: dict): return msg\n"
        "assert t.adapt_subscriber(f, 'task') is f and t.to_plain({'a': 1}) == {'a': 1}\n"
        "assert 'pydantic' not in sys.modules and 'msgspec' not in sys.modules, sys.modules\n"
    )
    import subprocess

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- remote errors


@pytest.fixture(autouse=True)
def _registry() -> Iterator[None]:
    """Each test starts from (and leaves) the registry as it was."""
    saved = dict(typed_errors._REGISTRY)
    yield
    typed_errors._REGISTRY.clear()
    typed_errors._REGISTRY.update(saved)


class OrderError(Exception):
    """A base class of the application's errors."""


class OutOfStock(OrderError):
    """Required constructor arguments, a __str__ that needs them, an attribute default."""

    retry_after: float = 60.0
    init_calls = 0

    def __init__(self, sku: str, wanted: int) -> None:
        type(self).init_calls += 1
        self.sku = sku
        self.wanted = wanted
        super().__init__(sku, wanted)

    def __str__(self) -> str:
        return f"only a few {self.sku} left, wanted {self.wanted}"


def reply_for(exc: BaseException) -> tuple[RemoteException, dict[str, str]]:
    """What the caller's side has: the RemoteException parse_reply makes, and the headers."""
    try:
        raise exc
    except BaseException as raised:
        import traceback

        tb = "".join(traceback.format_exception(raised))
        remote = RemoteException(str(raised), type(raised).__name__, tb)
        return remote, remote_error_headers(raised)


def test_the_headers_name_the_type_and_its_bases() -> None:
    assert remote_error_headers(OutOfStock("a", 1)) == {
        ERROR_TYPE_HEADER: "tests.test_typed.OutOfStock",
        ERROR_BASES_HEADER: "tests.test_typed.OrderError",
    }
    assert remote_error_headers(ValueError("x")) == {ERROR_TYPE_HEADER: "builtins.ValueError"}
    assert remote_error_headers(Exception("x")) == {}
    assert remote_error_headers(InvalidMessage("x")) == {
        ERROR_TYPE_HEADER: "kiwi_anyio.exceptions.InvalidMessage",
        ERROR_BASES_HEADER: "kiwi_anyio.exceptions.RemoteException,kiwi_anyio.exceptions.KiwiError",
    }


def test_a_registered_error_round_trips_as_its_type() -> None:
    assert register_remote_error(OutOfStock) is OutOfStock  # a decorator
    remote, headers = reply_for(OutOfStock("pears", 5))
    calls = OutOfStock.init_calls
    exc = rebuild_remote_error(remote, headers)
    assert OutOfStock.init_calls == calls  # __init__ is not called: its arguments are unknown
    assert isinstance(exc, OutOfStock) and isinstance(exc, OrderError)
    assert isinstance(exc, RemoteException)  # `except RemoteException` still catches it
    assert type(exc).__name__ == "OutOfStock"
    assert type(exc).__qualname__ == "OutOfStock"
    assert type(exc).__module__ == __name__
    assert str(exc) == "only a few pears left, wanted 5" == str(remote)
    assert exc.args == (str(remote),)
    assert exc.remote_type == "OutOfStock"
    assert exc.remote_traceback == remote.remote_traceback
    assert exc.retry_after == 60.0  # class-level defaults are there
    assert not hasattr(exc, "sku")  # what only __init__ sets is not
    with pytest.raises(OutOfStock, match="only a few pears"):
        raise exc
    # the same class every time, and it pickles
    assert type(rebuild_remote_error(remote, headers)) is type(exc)
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is type(exc) and str(copy) == str(exc)
    assert copy.remote_traceback == exc.remote_traceback


def test_a_registered_base_class_catches_unregistered_subclasses() -> None:
    @register_remote_error
    class Local(OrderError):
        pass

    register_remote_error(OrderError)
    remote, headers = reply_for(OutOfStock("pears", 5))
    exc = rebuild_remote_error(remote, headers)
    assert type(exc).__name__ == "OrderError" and isinstance(exc, OrderError)
    assert not isinstance(exc, OutOfStock)
    assert isinstance(rebuild_remote_error(*reply_for(Local())), Local)


def test_a_builtin_type_can_be_registered() -> None:
    register_remote_error(KeyError)
    register_remote_error(FileNotFoundError)
    exc = rebuild_remote_error(*reply_for(KeyError("k")))
    assert isinstance(exc, KeyError) and isinstance(exc, RemoteException)
    exc = rebuild_remote_error(*reply_for(FileNotFoundError(2, "gone")))
    assert isinstance(exc, FileNotFoundError) and isinstance(exc, OSError)
    assert str(exc) == "[Errno 2] gone"


def test_invalid_message_is_registered_by_default() -> None:
    remote, headers = reply_for(InvalidMessage("invalid Order: quantity: bad"))
    exc = rebuild_remote_error(remote, headers)
    assert type(exc) is InvalidMessage
    assert str(exc) == "invalid Order: quantity: bad"
    assert exc.remote_type == "InvalidMessage" and exc.errors == ()


def test_an_unregistered_type_stays_a_remote_exception() -> None:
    remote, headers = reply_for(OutOfStock("pears", 5))
    assert rebuild_remote_error(remote, headers) is remote
    assert rebuild_remote_error(remote, {}) is remote
    assert rebuild_remote_error(remote, None) is remote
    register_remote_error(OutOfStock)
    unregister_remote_error(OutOfStock)
    assert rebuild_remote_error(remote, headers) is remote


def test_a_registration_replaces_one_of_the_same_name() -> None:
    first = type("Twin", (Exception,), {"__module__": "app"})
    second = type("Twin", (Exception,), {"__module__": "app"})
    register_remote_error(first)
    register_remote_error(second)
    exc = rebuild_remote_error(RemoteException("x"), {ERROR_TYPE_HEADER: "app.Twin"})
    assert isinstance(exc, second) and not isinstance(exc, first)
    unregister_remote_error(first)  # not the registered one: no effect
    assert isinstance(
        rebuild_remote_error(RemoteException("x"), {ERROR_TYPE_HEADER: "app.Twin"}), second
    )


@pytest.mark.parametrize(
    "bad", [int, BaseException, KeyboardInterrupt, "builtins.ValueError", None]
)
def test_only_exception_classes_can_be_registered(bad: Any) -> None:
    with pytest.raises(TypeError):
        register_remote_error(bad)


@pytest.mark.parametrize(
    "headers",
    [
        {ERROR_TYPE_HEADER: "os.system"},
        {ERROR_TYPE_HEADER: "posix.system", ERROR_BASES_HEADER: "os.system,subprocess.Popen"},
        {ERROR_TYPE_HEADER: "builtins.eval"},
        {ERROR_TYPE_HEADER: "kiwi_anyio_never_imported.Evil"},
        {ERROR_TYPE_HEADER: "x" * 10_000_000},
        {ERROR_TYPE_HEADER: "a", ERROR_BASES_HEADER: ",".join(["os.system"] * 100_000)},
        {ERROR_TYPE_HEADER: b"os.system\xff"},
        {ERROR_TYPE_HEADER: 12},
        {ERROR_TYPE_HEADER: ["os.system"]},
        {ERROR_TYPE_HEADER: None, ERROR_BASES_HEADER: "tests.test_typed.OutOfStock"},
    ],
    ids=[
        "os.system",
        "bases",
        "eval",
        "import",
        "huge",
        "many-bases",
        "bytes",
        "int",
        "list",
        "no-type",
    ],
)
def test_hostile_headers_construct_nothing(
    headers: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any) -> None:
        raise AssertionError("os.system was called")

    monkeypatch.setattr(os, "system", refuse)
    remote = RemoteException("x", "system", "Traceback ...\n" * 100_000)
    modules = set(sys.modules)
    assert rebuild_remote_error(remote, headers) is remote
    assert set(sys.modules) == modules  # nothing imported by name


def test_bytes_header_values_are_read() -> None:
    register_remote_error(OutOfStock)
    exc = rebuild_remote_error(
        RemoteException("m"), {ERROR_TYPE_HEADER: b"tests.test_typed.OutOfStock"}
    )
    assert isinstance(exc, OutOfStock)


def test_a_hostile_constructor_leaves_the_remote_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Hostile(Exception):
        def __new__(cls, *args: Any) -> Hostile:
            raise RuntimeError("no")

    register_remote_error(Hostile)
    remote = RemoteException("m")
    with caplog.at_level(logging.WARNING, logger="kiwi_anyio.typed"):
        assert (
            rebuild_remote_error(remote, remote_error_headers(Exception.__new__(Hostile))) is remote
        )
    assert "could not rebuild" in caplog.text


def test_a_class_that_cannot_be_subclassed_comes_back_with_the_remote_as_cause() -> None:
    class Final(Exception):
        def __init_subclass__(cls, **kwargs: Any) -> None:
            raise TypeError("final")

    register_remote_error(Final)
    remote = RemoteException("m", "Final", "tb")
    exc = rebuild_remote_error(remote, {ERROR_TYPE_HEADER: typed.qualified_name(Final)})
    assert type(exc) is Final
    assert exc.__cause__ is remote
    assert str(exc) == "m"


def test_an_already_rebuilt_error_is_left_alone() -> None:
    register_remote_error(OutOfStock)
    remote, headers = reply_for(OutOfStock("a", 1))
    exc = rebuild_remote_error(remote, headers)
    assert isinstance(exc, RemoteException)
    assert rebuild_remote_error(exc, headers) is exc
    # raised on again by a subscriber, it is named as its registered type
    assert remote_error_headers(exc)[ERROR_TYPE_HEADER] == "tests.test_typed.OutOfStock"


def test_error_headers_travel_in_the_reply_until_it_is_encoded() -> None:
    reply = {"exception": "only a few", "exception_type": "OutOfStock"}
    assert typed.attach_error_headers(reply, OutOfStock("a", 1)) is reply
    body, headers = typed.split_reply_headers(reply)
    assert body == {"exception": "only a few", "exception_type": "OutOfStock"}  # the wire's
    assert headers == remote_error_headers(OutOfStock("a", 1))
    assert typed.REPLY_HEADERS_KEY in reply  # unchanged: a resend still has them
    plain = {"result": 1}
    assert typed.split_reply_headers(plain) == (plain, None)
    assert typed.split_reply_headers(plain)[0] is plain
    # an exception with no name to send (Exception itself) adds nothing
    assert typed.REPLY_HEADERS_KEY not in typed.attach_error_headers({}, Exception("x"))
