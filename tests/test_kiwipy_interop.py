"""Wire compatibility with kiwiPy 0.9: a kiwiPy process and kiwi_anyio on one broker.

kiwiPy pins pamqp 3, so it cannot be imported here: it runs in its own virtualenv as a separate
process, ``tests/kiwipy_peer.py`` (see its docstring for the JSON-lines protocol). Its python is
``$KIWI_ANYIO_KIWIPY_PYTHON`` (set by ``scripts/test``), else ``.venv-kiwipy/bin/python`` next
to this repository; without either these tests fail (they are never skipped).

Each test starts one peer (``RmqThreadCommunicator`` with ``testing_mode=True`` unless stated;
on RabbitMQ 4, where kiwiPy's testing mode declares a transient task queue that 4.3 refuses,
both sides run without it)
and one kiwi_anyio communicator on the same, freshly named exchanges and task queue, and proves
both directions: tasks, RPC and broadcasts, and that both sides declare the task queue (durable
or in testing mode) with identical arguments.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

import kiwi_anyio
from kiwi_anyio.exceptions import ChannelClosed
from kiwi_anyio.protocol import connect as amqp_connect

pytestmark = [pytest.mark.anyio, pytest.mark.broker]

PEER_SCRIPT = Path(__file__).with_name("kiwipy_peer.py")
DEFAULT_KIWIPY_PYTHON = Path(__file__).resolve().parent.parent / ".venv-kiwipy" / "bin" / "python"
KIWIPY_PYTHON_ENV = "KIWI_ANYIO_KIWIPY_PYTHON"

TEST_TIMEOUT = 40.0  # the whole test, peer start and stop included
STARTUP_TIMEOUT = 20.0  # kiwiPy's python starting and connecting (~1 s)
STOP_TIMEOUT = 8.0  # the peer closing its communicator after stdin closed
WAIT = 10.0  # one reply or event
DELAY = 0.3  # how long delegated results take on either side

TASK_TTL = 604800000  # kiwiPy's x-message-ttl of task queues (7 days)


# ---------------------------------------------------------------- the kiwiPy peer


def kiwipy_python() -> str:
    """kiwiPy's interpreter; fails (never skips) the test when there is none."""
    configured = os.environ.get(KIWIPY_PYTHON_ENV)
    if configured:
        if not os.access(configured, os.X_OK):
            pytest.fail(f"{KIWIPY_PYTHON_ENV}={configured!r} is not an executable python")
        return configured
    if DEFAULT_KIWIPY_PYTHON.exists():
        return str(DEFAULT_KIWIPY_PYTHON)
    pytest.fail(
        f"no python with kiwiPy 0.9: set {KIWIPY_PYTHON_ENV}, or create "
        f"{DEFAULT_KIWIPY_PYTHON.parent.parent} with `python3 -m venv .venv-kiwipy && "
        ".venv-kiwipy/bin/pip install 'kiwipy[rmq]==0.9.0'` (scripts/test does both)"
    )


@dataclass(frozen=True)
class Names:
    """Exchange and task queue names unique to one test, used by both sides."""

    message_exchange: str
    task_exchange: str
    task_queue: str

    @classmethod
    def unique(cls) -> Names:
        prefix = f"kiwi-interop-{uuid.uuid4().hex[:12]}"
        # kiwiPy's defaults name the task exchange and the task queue alike
        return cls(f"{prefix}.messages", f"{prefix}.tasks", f"{prefix}.tasks")

    def peer_args(self) -> list[str]:
        return [
            "--message-exchange",
            self.message_exchange,
            "--task-exchange",
            self.task_exchange,
            "--task-queue",
            self.task_queue,
        ]


class PeerError(AssertionError):
    """The kiwiPy peer died, misbehaved or did not answer in time."""


class Peer:
    """A running ``kiwipy_peer.py``: send commands, read its events.

    Output is read on demand by whoever waits (under a lock), so no background task is needed.
    """

    def __init__(self, process: anyio.abc.Process, stderr: IO[bytes], mode: str) -> None:
        self.process = process
        self.mode = mode
        self.events: list[dict[str, Any]] = []
        self.hello: dict[str, Any] = {}
        self._stderr = stderr
        self._replies: dict[int, dict[str, Any]] = {}
        self._next_id = 0
        self._ready = False
        self._read_lock = anyio.Lock()
        assert process.stdout is not None
        self._stdout = BufferedByteReceiveStream(process.stdout)

    def stderr_tail(self, lines: int = 40) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _fail(self, what: str) -> PeerError:
        return PeerError(
            f"kiwiPy peer ({self.mode}, returncode {self.process.returncode}): {what}\n"
            f"--- peer stderr (tail) ---\n{self.stderr_tail()}"
        )

    async def _read_line(self) -> None:
        try:
            raw = await self._stdout.receive_until(b"\n", 1 << 22)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.ClosedResourceError):
            raise self._fail("its output ended") from None
        line = raw.decode().strip()
        if line == "READY":
            self._ready = True
            return
        try:
            item = json.loads(line)
        except ValueError:
            raise self._fail(f"unexpected output line {line!r}") from None
        if "id" in item:
            self._replies[item["id"]] = item
        elif item.get("event") == "hello":
            self.hello = item
        else:
            self.events.append(item)

    async def _until(self, condition: Callable[[], bool], what: str, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            while not condition():
                async with self._read_lock:
                    if not condition():
                        await self._read_line()
            return
        raise self._fail(f"timed out after {timeout} s waiting for {what}")

    async def wait_ready(self) -> None:
        await self._until(lambda: self._ready, "READY", STARTUP_TIMEOUT)
        assert self.hello.get("kiwipy") == "0.9.0", f"the peer runs kiwiPy {self.hello}"

    async def command(self, op: str, timeout: float = WAIT, **args: Any) -> dict[str, Any]:
        """Run ``op`` in the peer and return its reply."""
        self._next_id += 1
        ident = self._next_id
        line = json.dumps({"id": ident, "op": op, "timeout": timeout, **args}) + "\n"
        assert self.process.stdin is not None
        await self.process.stdin.send(line.encode())
        await self._until(lambda: ident in self._replies, f"the reply to {op}", timeout + 5)
        return self._replies.pop(ident)

    async def result(self, op: str, **args: Any) -> tuple[Any, int]:
        """Run ``op``; return the final value and how many futures it was nested in."""
        reply = await self.command(op, **args)
        assert reply["ok"], f"{op} {args} failed in kiwiPy: {reply}"
        return reply["result"], reply["nested"]

    async def wait_events(
        self, predicate: Callable[[dict[str, Any]], bool], count: int, what: str
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` events match ``predicate``; return the matching ones."""

        def matching() -> list[dict[str, Any]]:
            return [event for event in self.events if predicate(event)]

        await self._until(lambda: len(matching()) >= count, what, WAIT)
        return matching()

    async def wait_kind(self, kind: str, count: int) -> list[dict[str, Any]]:
        """Wait until ``count`` events of ``kind`` (``task``, ``rpc``, ``broadcast``) arrived."""
        return await self.wait_events(lambda e: e["event"] == kind, count, f"{count} {kind}s")

    async def stop(self) -> None:
        """Close stdin (the peer's stop signal), wait, and kill it if it lingers."""
        process = self.process
        with anyio.CancelScope(shield=True):
            try:
                if process.stdin is not None:
                    await process.stdin.aclose()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass
            with anyio.move_on_after(STOP_TIMEOUT):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.aclose()


_TESTING_MODE: dict[str, bool] = {}


async def default_testing_mode(url: str) -> bool:
    """kiwiPy's testing mode where the broker allows it: RabbitMQ 3.x (4.3 refuses its
    transient task queues, and our broker 4 is configured so)."""
    if url not in _TESTING_MODE:
        async with amqp_connect(url) as conn:
            version = str(conn.server_properties.get("version", ""))
        _TESTING_MODE[url] = version.startswith("3.")
    return _TESTING_MODE[url]


@asynccontextmanager
async def kiwipy_peer(
    url: str,
    names: Names,
    mode: str = "serve",
    *,
    testing_mode: bool | None = None,
    prefetch: int = 0,
) -> AsyncIterator[Peer]:
    """Start ``kiwipy_peer.py``; it is stopped (killed if need be) when the block exits."""
    if testing_mode is None:
        testing_mode = await default_testing_mode(url)
    command = [kiwipy_python(), str(PEER_SCRIPT), mode, "--url", url, *names.peer_args()]
    if not testing_mode:
        command.append("--no-testing-mode")
    if prefetch:
        command += ["--prefetch", str(prefetch)]
    with tempfile.TemporaryFile() as stderr:
        process = await anyio.open_process(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
        )
        peer = Peer(process, stderr, mode)
        try:
            await peer.wait_ready()
            yield peer
        finally:
            await peer.stop()


@asynccontextmanager
async def kiwi_comm(
    url: str, names: Names, *, testing_mode: bool | None = None, **options: Any
) -> AsyncIterator[kiwi_anyio.Communicator]:
    """A kiwi_anyio communicator on the test's exchanges and task queue."""
    if testing_mode is None:
        testing_mode = await default_testing_mode(url)
    async with kiwi_anyio.connect(
        url,
        message_exchange=names.message_exchange,
        task_exchange=names.task_exchange,
        task_queue=names.task_queue,
        testing_mode=testing_mode,
        **options,
    ) as comm:
        yield comm


def resolve_later(value: Any) -> kiwi_anyio.Future[Any]:
    """A kiwi_anyio Future resolved with ``value`` from another thread after ``DELAY``."""
    future: kiwi_anyio.Future[Any] = kiwi_anyio.Future()
    timer = threading.Timer(DELAY, future.set_result, (value,))
    timer.daemon = True
    timer.start()
    return future


class Worker:
    """kiwi_anyio subscribers that mirror the peer's (see ``kiwipy_peer.py``)."""

    def __init__(self) -> None:
        self.tasks: list[Any] = []
        self.rpcs: list[tuple[str, Any]] = []

    async def on_task(self, comm: kiwi_anyio.Communicator, task: Any) -> Any:
        self.tasks.append(task)
        if task == "raise":
            raise RuntimeError("nope")
        if isinstance(task, dict):
            if "delegate" in task:
                return resolve_later(task["delegate"])
            if "tag" in task:
                await anyio.sleep(task.get("sleep", 0.0))
                return {"by": "kiwi_anyio", "tag": task["tag"]}
        if isinstance(task, int | float) and not isinstance(task, bool):
            return task * 2
        return task

    def rpc_echo(self, comm: kiwi_anyio.Communicator, msg: Any) -> Any:
        # a plain function: kiwi_anyio runs it in a worker thread
        self.rpcs.append(("echo", msg))
        return msg

    async def rpc_fail(self, comm: kiwi_anyio.Communicator, msg: Any) -> Any:
        self.rpcs.append(("fail", msg))
        raise RuntimeError("nope")

    async def rpc_delegate(self, comm: kiwi_anyio.Communicator, msg: Any) -> Any:
        self.rpcs.append(("delegate", msg))
        return resolve_later(msg)


async def poll(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait until ``condition()``; subscribers that run in worker threads cannot set an Event."""
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.02)


# A message both YAML codecs must carry unchanged: strings that YAML 1.1 would read as booleans,
# null, numbers or dates unless quoted, non-ASCII text, big integers, and a body larger than one
# AMQP frame (131072 bytes).
MESSAGE: dict[str, Any] = {
    "plain": "sup yo'",
    "yaml11": ["no", "on", "Yes", "y", "null", "~", "2024-01-01", "0o17", "0x1f", "1:20", "1e3"],
    "unicode": "h\u00e9llo \u2713 \U0001f600",
    "numbers": [0, -5, 1.5, 2**70, True, False, None],
    "nested": {"empty_list": [], "empty_dict": {}, "list": [[1], {"k": "v"}]},
    "large": "x" * 300_000,
}


# ---------------------------------------------------------------- broadcasts helpers

BROADCASTS = [
    # (body, sender, subject)
    ("b0", "bob.jones", "purchase.car"),
    ("b1", "alice.smith", "purchase.car"),
    ("b2", "bob.jones", "sell.car"),
    ("b3", "alice.smith", "sell.car"),
    ("b4", "alice.jones", "purchase.piano"),
    ("b5", "bob.smith", "purchase.piano"),
    ("b6", "alice.jones", "sell.piano"),
]
END = ("end", "end.end", "end.end")  # matches no filter: marks that every broadcast arrived


def bodies_where(subject: bool = False, sender: bool = False) -> list[str]:
    """Bodies of ``BROADCASTS`` whose subject is purchase.* and/or sender is *.jones."""
    return sorted(
        body
        for body, snd, sub in BROADCASTS
        if (not subject or sub.startswith("purchase.")) and (not sender or snd.endswith(".jones"))
    )


# ---------------------------------------------------------------- tasks


async def test_tasks_from_kiwipy_to_kiwi_anyio_worker(broker_url: str) -> None:
    names = Names.unique()
    worker = Worker()
    with anyio.fail_after(TEST_TIMEOUT):
        async with kiwi_comm(broker_url, names) as comm:
            await comm.add_task_subscriber(worker.on_task)
            async with kiwipy_peer(broker_url, names, "client") as peer:
                # result
                assert await peer.result("task_send", task=21) == (42, 0)
                assert await peer.result("task_send", task={"x": [1, "two"]}) == (
                    {"x": [1, "two"]},
                    0,
                )
                # exception: kiwiPy gets RemoteException with the message
                reply = await peer.command("task_send", task="raise")
                assert not reply["ok"]
                assert reply["error"] == "kiwipy.exceptions.RemoteException"
                assert reply["message"] == "nope"
                # no_reply: kiwiPy gets None at once and the task runs exactly once
                reply = await peer.command("task_send", task="once", no_reply=True)
                assert reply["ok"] and reply.get("none") is True
                await poll(lambda: "once" in worker.tasks)
                # delegated: a kiwi_anyio Future resolved later → kiwiPy's future resolves to
                # a future (the "pending" reply) that resolves to the value
                assert await peer.result("task_send", task={"delegate": "later"}) == ("later", 1)
                assert worker.tasks.count("once") == 1
    assert worker.tasks.count("once") == 1
    assert Counter(map(repr, worker.tasks)) == Counter(
        map(repr, [21, {"x": [1, "two"]}, "raise", "once", {"delegate": "later"}])
    )


async def test_tasks_from_kiwi_anyio_to_kiwipy_worker(broker_url: str) -> None:
    names = Names.unique()
    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            kiwipy_peer(broker_url, names, "serve") as peer,
            kiwi_comm(broker_url, names) as comm,
        ):
            # result
            future = await comm.task_send(21)
            assert future is not None
            assert await future == 42
            # a tuple survives the round trip (YAML !!python/tuple both ways)
            assert await (await _sent(comm.task_send({"x": (1, "two")}))) == {"x": (1, "two")}
            # exception → kiwi_anyio.RemoteException with kiwiPy's message
            future = await comm.task_send("raise")
            assert future is not None
            with pytest.raises(kiwi_anyio.RemoteException) as info:
                await future
            assert str(info.value) == "nope"
            assert info.value.remote_type is None  # kiwiPy sends only str(exc)
            # no_reply: None, and the task runs exactly once
            # the overloads promise None; the test checks it at run time
            assert await comm.task_send("once", no_reply=True) is None  # type: ignore[func-returns-value]
            await peer.wait_events(_task_event("once"), 1, "the no_reply task")
            # delegated: kiwiPy returns a pending future → a Future that resolves later
            outer = await _sent(comm.task_send({"delegate": "later"}))
            inner = await outer
            assert isinstance(inner, kiwi_anyio.Future)
            assert await inner == "later"
            # ... and unwrap() follows the chain to the value
            outer = await _sent(comm.task_send({"delegate": "unwrapped"}))
            assert await outer.unwrap(WAIT) == "unwrapped"
            handled = [e["task"] for e in await peer.wait_kind("task", 6)]
            assert handled == [
                21,
                {"x": [1, "two"]},
                "raise",
                "once",
                {"delegate": "later"},
                {"delegate": "unwrapped"},
            ]


async def _sent(send: Any) -> kiwi_anyio.Future[Any]:
    """``await comm.task_send(...)``, asserting a future came back."""
    future = await send
    assert isinstance(future, kiwi_anyio.Future), future
    return future


def _task_event(task: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event["event"] == "task" and event["task"] == task


# ---------------------------------------------------------------- RPC


async def test_rpc_from_kiwipy_to_kiwi_anyio(broker_url: str) -> None:
    names = Names.unique()
    worker = Worker()
    with anyio.fail_after(TEST_TIMEOUT):
        async with kiwi_comm(broker_url, names) as comm:
            await comm.add_rpc_subscriber(worker.rpc_echo, "echo")
            await comm.add_rpc_subscriber(worker.rpc_fail, "fail")
            await comm.add_rpc_subscriber(worker.rpc_delegate, "delegate")
            async with kiwipy_peer(broker_url, names, "client") as peer:
                msg = MESSAGE
                assert await peer.result("rpc_send", recipient="echo", msg=msg) == (msg, 0)
                reply = await peer.command("rpc_send", recipient="fail", msg="x")
                assert not reply["ok"]
                assert reply["error"] == "kiwipy.exceptions.RemoteException"
                assert reply["message"] == "nope"
                assert await peer.result("rpc_send", recipient="delegate", msg="later") == (
                    "later",
                    1,
                )
                # nobody serves this identifier: kiwiPy raises UnroutableError
                reply = await peer.command("rpc_send", recipient="nobody", msg="x")
                assert not reply["ok"]
                assert reply["error"] == "kiwipy.exceptions.UnroutableError", reply
    assert worker.rpcs == [("echo", msg), ("fail", "x"), ("delegate", "later")]


async def test_rpc_from_kiwi_anyio_to_kiwipy(broker_url: str) -> None:
    names = Names.unique()
    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            kiwipy_peer(broker_url, names, "serve") as peer,
            kiwi_comm(broker_url, names) as comm,
        ):
            msg = MESSAGE
            assert await (await comm.rpc_send("echo", msg)) == msg
            future = await comm.rpc_send("fail", "x")
            with pytest.raises(kiwi_anyio.RemoteException) as info:
                await future
            assert str(info.value) == "nope"
            inner = await (await comm.rpc_send("delegate", "later"))
            assert isinstance(inner, kiwi_anyio.Future)
            assert await inner == "later"
            assert await (await comm.rpc_send("delegate", "unwrapped")).unwrap(WAIT) == (
                "unwrapped"
            )
            with pytest.raises(kiwi_anyio.UnroutableError):
                await comm.rpc_send("nobody", "x")
            rpcs = [(e["recipient"], e["msg"]) for e in await peer.wait_kind("rpc", 4)]
            assert rpcs == [
                ("echo", msg),
                ("fail", "x"),
                ("delegate", "later"),
                ("delegate", "unwrapped"),
            ]


# ---------------------------------------------------------------- broadcasts


async def test_broadcasts_from_kiwi_anyio_to_kiwipy_filters(broker_url: str) -> None:
    names = Names.unique()
    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            kiwipy_peer(broker_url, names, "serve") as peer,
            kiwi_comm(broker_url, names) as comm,
        ):
            for body, sender, subject in BROADCASTS:
                assert await comm.broadcast_send(body, sender=sender, subject=subject) is True
            assert await comm.broadcast_send("with-id", "s.x", "other", correlation_id="c-1")
            assert await comm.broadcast_send(*END)
            # "all" is the peer's last subscriber, so once it saw END every filter saw its share
            await peer.wait_events(
                lambda e: e["subscriber"] == "all" and e["body"] == "end", 1, "the END broadcast"
            )

            def seen(subscriber: str) -> list[str]:
                return sorted(
                    e["body"]
                    for e in peer.events
                    if e["event"] == "broadcast" and e["subscriber"] == subscriber
                )

            assert seen("subject") == bodies_where(subject=True)
            assert seen("sender") == bodies_where(sender=True)
            assert seen("both") == bodies_where(subject=True, sender=True)
            assert seen("all") == sorted([b for b, _, _ in BROADCASTS] + ["with-id", "end"])
            # the message kiwiPy's subscribers get, field by field
            with_id = [e for e in peer.events if e.get("body") == "with-id"]
            assert with_id == [
                {
                    "event": "broadcast",
                    "subscriber": "all",
                    "body": "with-id",
                    "sender": "s.x",
                    "subject": "other",
                    "correlation_id": "c-1",
                }
            ]
            b0 = [e for e in peer.events if e.get("body") == "b0" and e["subscriber"] == "all"]
            assert b0[0]["sender"] == "bob.jones"
            assert b0[0]["subject"] == "purchase.car"
            assert b0[0]["correlation_id"] is None


async def test_broadcasts_from_kiwipy_to_kiwi_anyio_filters(broker_url: str) -> None:
    names = Names.unique()
    received: dict[str, list[tuple[Any, Any, Any, Any]]] = {
        "subject": [],
        "sender": [],
        "both": [],
        "all": [],
    }

    def recorder(name: str) -> Callable[..., None]:
        def on_broadcast(
            comm: kiwi_anyio.Communicator, body: Any, sender: Any, subject: Any, cid: Any
        ) -> None:
            received[name].append((body, sender, subject, cid))

        return on_broadcast

    with anyio.fail_after(TEST_TIMEOUT):
        async with kiwi_comm(broker_url, names) as comm:
            await comm.add_broadcast_subscriber(
                kiwi_anyio.BroadcastFilter(recorder("subject"), subject="purchase.*")
            )
            await comm.add_broadcast_subscriber(
                kiwi_anyio.BroadcastFilter(recorder("sender"), sender="*.jones")
            )
            await comm.add_broadcast_subscriber(
                kiwi_anyio.BroadcastFilter(recorder("both"), subject="purchase.*", sender="*.jones")
            )
            await comm.add_broadcast_subscriber(recorder("all"))
            async with kiwipy_peer(broker_url, names, "client") as peer:
                for body, sender, subject in BROADCASTS:
                    sent = await peer.result(
                        "broadcast_send", body=body, sender=sender, subject=subject
                    )
                    assert sent == (True, 0)
                await peer.result(
                    "broadcast_send", body="with-id", sender="s.x", subject="o", correlation_id="c"
                )
                body, sender, subject = END
                await peer.result("broadcast_send", body=body, sender=sender, subject=subject)
                # kiwi_anyio handles broadcasts one at a time, and END matches no filter: once
                # "all" saw it, every subscriber has seen everything before it
                await poll(lambda: any(m[0] == "end" for m in received["all"]))

    def seen(name: str) -> list[str]:
        return sorted(message[0] for message in received[name])

    assert seen("subject") == bodies_where(subject=True)
    assert seen("sender") == bodies_where(sender=True)
    assert seen("both") == bodies_where(subject=True, sender=True)
    assert seen("all") == sorted([b for b, _, _ in BROADCASTS] + ["with-id", "end"])
    assert ("with-id", "s.x", "o", "c") in received["all"]
    assert ("b4", "alice.jones", "purchase.piano", None) in received["both"]


# ---------------------------------------------------------------- task queue declarations


async def test_shared_task_queue_kiwipy_and_kiwi_anyio_workers(broker_url: str) -> None:
    """Both declare the testing-mode task queue (no 406) and both consume from it."""
    names = Names.unique()
    worker = Worker()
    tags = list(range(20))
    with anyio.fail_after(TEST_TIMEOUT):
        # kiwiPy declares the exchanges and the task queue first; kiwi_anyio redeclares them
        async with (
            kiwipy_peer(broker_url, names, "serve", prefetch=1) as peer,
            kiwi_comm(broker_url, names, task_prefetch_count=1) as comm,
        ):
            await comm.add_task_subscriber(worker.on_task)
            # half sent by kiwi_anyio, half by kiwiPy
            ours = [await _sent(comm.task_send({"tag": tag, "sleep": 0.05})) for tag in tags[:10]]
            reply = await peer.command(
                "task_send_many", tasks=[{"tag": tag, "sleep": 0.05} for tag in tags[10:]]
            )
            assert reply["ok"], reply
            theirs = reply["results"]
            our_results = [await future for future in ours]
            assert all(outcome["ok"] for outcome in theirs), theirs
            results = our_results + [outcome["result"] for outcome in theirs]
            by = Counter(result["by"] for result in results)
            handled = await peer.wait_kind("task", by["kiwipy"])
    # every task got exactly one result, its own, from one of the two workers
    assert [result["tag"] for result in results] == tags
    assert set(by) <= {"kiwipy", "kiwi_anyio"}
    # and was handled exactly once
    handled_by_kiwipy = [e["task"]["tag"] for e in handled]
    handled_by_us = [task["tag"] for task in worker.tasks]
    assert sorted(handled_by_kiwipy + handled_by_us) == tags
    assert by["kiwipy"] == len(handled_by_kiwipy)
    # prefetch 1 on both and 50 ms per task: the broker round-robins between the two
    assert handled_by_kiwipy, "kiwiPy's worker handled no task"
    assert handled_by_us, "kiwi_anyio's worker handled no task"


async def test_durable_task_queues_declared_identically(broker_url: str) -> None:
    """Without testing_mode: durable task queues with x-message-ttl 604800000.

    Queue A is declared by kiwiPy first and then used by kiwi_anyio; queue B the other way
    round. A differing durable flag or argument would make the second declaration fail with
    PRECONDITION_FAILED (406); the broker's check is shown to be active at the end.
    """
    names = Names.unique()
    queue_a = names.task_queue + ".kiwipy-first"
    queue_b = names.task_queue + ".kiwi-anyio-first"
    kiwipy_side = Names(names.message_exchange, names.task_exchange, queue_a)
    our_side = Names(names.message_exchange, names.task_exchange, queue_b)
    worker = Worker()
    try:
        with anyio.fail_after(TEST_TIMEOUT):
            async with kiwi_comm(broker_url, our_side, testing_mode=False) as comm:
                # kiwi_anyio declares the exchanges and queue B (its default task queue)
                await comm.add_task_subscriber(worker.on_task)
                # kiwiPy declares queue A (its default) and subscribes to it
                async with kiwipy_peer(
                    broker_url, kiwipy_side, "serve", testing_mode=False
                ) as peer:
                    # kiwiPy redeclares queue B (as it declares every task queue) and sends
                    assert await peer.result("task_queue_send", queue=queue_b, task=5) == (10, 0)
                    # kiwi_anyio redeclares queue A and sends to kiwiPy's worker
                    future = await comm.task_queue(queue_a).task_send(21)
                    assert future is not None
                    assert await future == 42
                    # kiwiPy's default queue A, reached from kiwiPy, still works
                    assert await peer.result("task_send", task=4) == (8, 0)
                assert worker.tasks == [5]
            async with amqp_connect(broker_url) as connection:
                for queue in (queue_a, queue_b):
                    # exactly the declaration both sides make: accepted
                    async with connection.channel() as channel:
                        ok = await channel.queue_declare(
                            queue, durable=True, arguments={"x-message-ttl": TASK_TTL}
                        )
                        assert ok.message_count == 0
                    # the broker does check: another TTL, or not durable, is refused
                    for durable, ttl in ((True, TASK_TTL + 1), (False, TASK_TTL)):
                        channel = await connection.channel()
                        with pytest.raises(ChannelClosed) as info:
                            await channel.queue_declare(
                                queue, durable=durable, arguments={"x-message-ttl": ttl}
                            )
                        assert info.value.reply_code == 406
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            async with amqp_connect(broker_url) as connection:
                for queue in (queue_a, queue_b):
                    async with connection.channel() as channel:
                        await channel.queue_delete(queue)
                for exchange in (names.message_exchange, names.task_exchange):
                    async with connection.channel() as channel:
                        await channel.exchange_delete(exchange)
