"""The app that tests/test_worker.py serves with ``kiwi-anyio worker tests.worker_app:app``.

Configured from the environment (each test has its own names):

* ``WORKER_TEST_QUEUE``: the task queue; ``WORKER_TEST_PREFETCH``: its prefetch count;
* ``WORKER_TEST_EXCHANGE``: a suffix for the exchanges (private to the test);
* ``WORKER_TEST_LOG``: a file that gets a line ``start ID PID`` and ``done ID PID`` per task;
* ``WORKER_TEST_FAST``: if set, tasks do not sleep (for the worker that finishes the rest).

A task is ``{"id": ID, "sleep": SECONDS, "block": SECONDS, "crash": PATH}``: it sleeps (or
blocks the event loop), and with ``crash`` the
first process to run it creates PATH and dies with ``os._exit(1)`` (the redelivery then runs
normally). The result is ``{"id": ID, "pid": PID}``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import anyio

import kiwi_anyio

QUEUE = os.environ.get("WORKER_TEST_QUEUE", "worker-test")
SUFFIX = os.environ.get("WORKER_TEST_EXCHANGE", "default")
LOG = os.environ.get("WORKER_TEST_LOG")
FAST = bool(os.environ.get("WORKER_TEST_FAST"))


def options() -> dict[str, Any]:
    """The communicator options of the app (and of the tests that send to it)."""
    return {
        "message_exchange": f"worker-test.messages.{SUFFIX}",
        "task_exchange": f"worker-test.tasks.{SUFFIX}",
        "task_queue": f"worker-test.tasks.{SUFFIX}",
    }


app = kiwi_anyio.App(name="worker-test", **options())


def _log(what: str, ident: Any) -> None:
    if LOG:
        with open(LOG, "a") as out:
            out.write(f"{what} {ident} {os.getpid()}\n")


def _block(seconds: float) -> None:
    """Block the event loop (as a handler that calls blocking code from ``async def``)."""
    time.sleep(seconds)


def _crash_once(marker: Path) -> None:
    """Die (as a crashing handler would) unless ``marker`` says some process did already."""
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)


@app.task(queue=QUEUE, prefetch_count=int(os.environ.get("WORKER_TEST_PREFETCH", "1")))
async def work(_comm: Any, task: dict[str, Any]) -> dict[str, Any]:
    ident = task.get("id")
    _log("start", ident)
    if task.get("crash"):
        _crash_once(Path(task["crash"]))
    if task.get("block"):
        _block(float(task["block"]))
    if task.get("sleep") and not FAST:
        await anyio.sleep(float(task["sleep"]))
    _log("done", ident)
    return {"id": ident, "pid": os.getpid()}


@app.task(queue=f"{QUEUE}-sync")
def work_in_a_thread(_comm: Any, task: dict[str, Any]) -> dict[str, Any]:
    """A plain function (run in a worker thread, which cannot be cancelled)."""
    _log("start", task["id"])
    if not FAST:
        time.sleep(float(task.get("sleep", 0)))
    _log("done", task["id"])
    return {"id": task["id"], "pid": os.getpid()}


started: list[str] = []


@app.on_startup
async def note_start(comm: kiwi_anyio.Communicator) -> None:
    started.append(comm.url)


#: an app with an RPC subscriber (refused with --workers N > 1)
rpc_app = kiwi_anyio.App(name="worker-test-rpc", **options())


@rpc_app.rpc("worker-test-echo")
async def echo(_comm: Any, msg: Any) -> Any:
    return msg


def make_app() -> kiwi_anyio.App:
    """A factory: ``tests.worker_app:make_app`` serves ``app``."""
    return app


#: an app whose startup hook fails (the worker exits 1)
broken_app = kiwi_anyio.App(name="worker-test-broken", **options())


@broken_app.on_startup
async def no_database() -> None:
    raise RuntimeError("the database is down")
