# mypy: ignore-errors
"""A kiwiPy 0.9 process for ``tests/test_kiwipy_interop.py``.

It runs under kiwiPy's own virtualenv (kiwiPy pins pamqp 3, kiwi_anyio needs pamqp 4), so it
imports nothing from kiwi_anyio and is excluded from mypy.

Usage::

    python kiwipy_peer.py {serve,client} --url URL --message-exchange M --task-exchange T
        --task-queue Q [--no-testing-mode] [--prefetch N]

``serve`` adds kiwiPy subscribers before it is ready:

* RPC ``echo`` (returns the message), ``fail`` (raises ``RuntimeError('nope')``) and
  ``delegate`` (returns a ``kiwipy.Future`` resolved with the message 0.3 s later);
* one task subscriber: ``'raise'`` raises ``RuntimeError('nope')``; ``{'delegate': v}`` returns a
  ``kiwipy.Future`` resolved with ``v`` 0.3 s later; ``{'tag': t, 'sleep': s}`` sleeps ``s``
  seconds and returns ``{'by': 'kiwipy', 'tag': t}``; a number ``n`` returns ``n * 2``;
  anything else is returned as is. Every task is reported as an ``task`` event;
* broadcast subscribers ``subject`` (``BroadcastFilter(subject='purchase.*')``), ``sender``
  (``sender='*.jones'``), ``both`` (both filters) and ``all`` (no filter, added last), each
  reporting what it receives as a ``broadcast`` event.

``client`` adds nothing. Both modes then take commands.

Protocol, JSON lines both ways:

* stdout: ``{"event": ...}`` lines for what the subscribers receive, ``{"id": n, ...}`` replies
  to commands, and one ``READY`` line once connected (and subscribed).
* stdin: one command a line, ``{"id": n, "op": OP, ...}``; closing stdin stops the peer.

Commands (each runs in its own thread; kiwiPy futures are followed through every "pending"
level, counted in ``nested``):

* ``task_send`` ``{task, no_reply, timeout}``; ``task_queue_send`` ``{queue, task, timeout}``
  (on ``comm.task_queue(queue)``, which declares that queue as kiwiPy does);
* ``task_send_many`` ``{tasks, timeout}``: sends all, then waits for all (a list of outcomes);
* ``rpc_send`` ``{recipient, msg, timeout}``;
* ``broadcast_send`` ``{body, sender, subject, correlation_id}``.

A reply is ``{"id": n, "ok": true, "result": v, "nested": k}`` (``"none": true`` when kiwiPy
returned ``None`` instead of a future) or ``{"id": n, "ok": false, "error": "module.Class",
"message": str(exc)}``.
"""

import argparse
import concurrent.futures
import json
import os
import queue
import sys
import threading
import time
import traceback

import kiwipy
from kiwipy import rmq

DELAY = 0.3
# Lines go out through one writer thread: a subscriber (on kiwiPy's event-loop thread) must never
# block on a full stdout pipe while the test is busy elsewhere, or kiwiPy's I/O would stall.
_output = queue.SimpleQueue()


def _write_output():
    while (line := _output.get()) is not None:
        sys.stdout.write(line)
        sys.stdout.flush()


_writer = threading.Thread(target=_write_output, name="peer-stdout", daemon=True)


def emit_line(line):
    _output.put(line + "\n")


def emit(obj):
    emit_line(json.dumps(obj, default=repr))


def error_name(exc):
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


def delayed(value):
    """A kiwipy.Future resolved with ``value`` from another thread a little later."""
    future = kiwipy.Future()
    timer = threading.Timer(DELAY, future.set_result, (value,))
    timer.daemon = True
    timer.start()
    return future


# ---------------------------------------------------------------- serve-mode subscribers


def on_task(_comm, task):
    emit({"event": "task", "task": task})
    if task == "raise":
        raise RuntimeError("nope")
    if isinstance(task, dict):
        if "delegate" in task:
            return delayed(task["delegate"])
        if "tag" in task:
            time.sleep(task.get("sleep", 0.0))
            return {"by": "kiwipy", "tag": task["tag"]}
    if isinstance(task, int | float) and not isinstance(task, bool):
        return task * 2
    return task


def rpc_echo(_comm, msg):
    emit({"event": "rpc", "recipient": "echo", "msg": msg})
    return msg


def rpc_fail(_comm, msg):
    emit({"event": "rpc", "recipient": "fail", "msg": msg})
    raise RuntimeError("nope")


def rpc_delegate(_comm, msg):
    emit({"event": "rpc", "recipient": "delegate", "msg": msg})
    return delayed(msg)


def broadcast_recorder(name):
    def on_broadcast(_comm, body, sender, subject, correlation_id):
        emit(
            {
                "event": "broadcast",
                "subscriber": name,
                "body": body,
                "sender": sender,
                "subject": subject,
                "correlation_id": correlation_id,
            }
        )

    return on_broadcast


def serve(comm):
    comm.add_rpc_subscriber(rpc_echo, "echo")
    comm.add_rpc_subscriber(rpc_fail, "fail")
    comm.add_rpc_subscriber(rpc_delegate, "delegate")
    comm.add_task_subscriber(on_task)
    comm.add_broadcast_subscriber(
        kiwipy.BroadcastFilter(broadcast_recorder("subject"), subject="purchase.*")
    )
    comm.add_broadcast_subscriber(
        kiwipy.BroadcastFilter(broadcast_recorder("sender"), sender="*.jones")
    )
    comm.add_broadcast_subscriber(
        kiwipy.BroadcastFilter(broadcast_recorder("both"), subject="purchase.*", sender="*.jones")
    )
    comm.add_broadcast_subscriber(broadcast_recorder("all"))


# ---------------------------------------------------------------- commands


def resolve(future, timeout):
    """The final value of a kiwiPy future and how many futures it was nested in."""
    nested = 0
    value = future.result(timeout=timeout)
    while isinstance(value, concurrent.futures.Future):
        nested += 1
        value = value.result(timeout=timeout)
    return {"result": value, "nested": nested}


def outcome(future, timeout):
    if future is None:
        return {"ok": True, "result": None, "nested": 0, "none": True}
    try:
        return {"ok": True, **resolve(future, timeout)}
    except Exception as exc:
        return {"ok": False, "error": error_name(exc), "message": str(exc)}


def run_command(comm, command):
    op = command["op"]
    timeout = command.get("timeout", 10.0)
    if op == "task_send":
        future = comm.task_send(command["task"], no_reply=command.get("no_reply", False))
        return outcome(future, timeout)
    if op == "task_queue_send":
        future = comm.task_queue(command["queue"]).task_send(command["task"])
        return outcome(future, timeout)
    if op == "task_send_many":
        futures = [comm.task_send(task) for task in command["tasks"]]
        return {"ok": True, "results": [outcome(future, timeout) for future in futures]}
    if op == "rpc_send":
        future = comm.rpc_send(command["recipient"], command["msg"])
        return outcome(future, timeout)
    if op == "broadcast_send":
        sent = comm.broadcast_send(
            command["body"],
            sender=command.get("sender"),
            subject=command.get("subject"),
            correlation_id=command.get("correlation_id"),
        )
        return {"ok": True, "result": sent, "nested": 0}
    raise ValueError(f"unknown op {op!r}")


def handle(comm, command):
    try:
        reply = run_command(comm, command)
    except Exception as exc:  # raised by the call itself (e.g. UnroutableError)
        reply = {"ok": False, "error": error_name(exc), "message": str(exc)}
    emit({"id": command.get("id"), **reply})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["serve", "client"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--message-exchange", required=True)
    parser.add_argument("--task-exchange", required=True)
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--no-testing-mode", action="store_true")
    parser.add_argument("--prefetch", type=int, default=0)
    args = parser.parse_args(argv)

    comm = rmq.RmqThreadCommunicator.connect(
        connection_params={"url": args.url},
        message_exchange=args.message_exchange,
        task_exchange=args.task_exchange,
        task_queue=args.task_queue,
        task_prefetch_count=args.prefetch,
        testing_mode=not args.no_testing_mode,
    )
    if args.mode == "serve":
        serve(comm)
    emit({"event": "hello", "kiwipy": kiwipy.__version__, "pid": os.getpid()})
    emit_line("READY")

    executor = concurrent.futures.ThreadPoolExecutor(max_workers=32)
    for line in sys.stdin:
        if line.strip():
            executor.submit(handle, comm, json.loads(line))
    executor.shutdown(wait=False, cancel_futures=True)
    comm.close()
    return 0


if __name__ == "__main__":
    _writer.start()
    try:
        code = main()
    except Exception:
        traceback.print_exc()
        code = 2
    _output.put(None)
    _writer.join(timeout=5)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
