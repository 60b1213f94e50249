"""Running an :class:`~kiwi_anyio.App` as a worker: ``kiwi-anyio worker module:app``.

* :func:`load_app` imports ``module:attribute`` (an app, or a function returning one).
* :func:`run_in_process` serves one app in this process until SIGINT/SIGTERM: the first signal
  stops gracefully (no new deliveries, running handlers get ``drain_timeout``, the rest are
  requeued), a second one exits at once with status 130 (the broker redelivers whatever was
  not acknowledged: nothing is lost).
* :func:`supervise` runs N such processes, each with its own connection, restarts a child
  that died (with backoff) and stops them all on a signal.
* Health: ``--health-port`` serves ``GET /healthz`` (200 when every process is connected and
  consuming, else 503, with a JSON body); ``--health-file`` is rewritten every
  ``--health-interval`` seconds while healthy and removed while not (and at exit).

A supervised child talks to its supervisor over a socket pair (``--supervised-fd``): it
reports its state (``status STATE CONNECTED``) and gets ``stop`` (graceful) or ``kill`` (at
once); the socket's end of file means that the supervisor died, and the child stops
gracefully.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from .app import App, AppStatus

__all__ = [
    "EXIT_CANNOT_CONNECT",
    "EXIT_FAILED",
    "EXIT_FORCED",
    "EXIT_OK",
    "EXIT_USAGE",
    "AppLoadError",
    "HealthReporter",
    "SystemdNotifier",
    "WorkerConfig",
    "configure_logging",
    "load_app",
    "run_in_process",
    "supervise",
]

logger = logging.getLogger("kiwi_anyio.worker")

EXIT_OK = 0  #: stopped cleanly (a signal, or the app stopped)
EXIT_FAILED = 1  #: the app failed: a startup hook raised, a handler crashed the process
EXIT_USAGE = 2  #: bad arguments, a bad URL, an app path that does not import
EXIT_CANNOT_CONNECT = 3  #: the broker cannot be reached, or refused the login
EXIT_FORCED = 130  #: stopped at once by a second signal

#: A child that ran at least this long before it died is restarted without backoff.
RESTART_RESET_AFTER = 10.0
RESTART_FIRST_DELAY = 0.5
RESTART_MAX_DELAY = 30.0
#: How long children get to exit after ``kill`` before they get SIGKILL.
KILL_GRACE = 3.0
#: A supervised child reports its status every ``health_interval / 2`` seconds (at most
#: this often) and is unhealthy ("unresponsive": a blocked event loop?) after a silence of
#: ``3 * health_interval`` (at least 1 s).
CHILD_REPORT_MAX_EVERY = 2.0


class AppLoadError(Exception):
    """``module:attribute`` does not name an :class:`~kiwi_anyio.App` (one-line message)."""


def load_app(spec: str) -> App:
    """The app named ``module:attribute`` (``module`` alone: its ``app``); the attribute
    may also be a function that returns an app. The current directory is importable, as
    with ``python -m``.

    Raises:
        AppLoadError: with a one-line message.
    """
    module_name, _, attribute = spec.partition(":")
    attribute = attribute or "app"
    names = [*module_name.split("."), *attribute.split(".")]
    if not all(part.isidentifier() for part in names):
        raise AppLoadError(f"{spec!r} is not an app path: write module:attribute, e.g. tasks:app")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise AppLoadError(f"cannot import {module_name!r}: no module named {exc.name!r}")
        raise AppLoadError(f"importing {module_name!r} failed: {_one_line(exc)}") from exc
    except Exception as exc:
        raise AppLoadError(f"importing {module_name!r} failed: {_one_line(exc)}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(target, App) and callable(target):
        try:
            target = target()
        except Exception as exc:
            raise AppLoadError(f"{spec} raised {_one_line(exc)}") from exc
    if not isinstance(target, App):
        raise AppLoadError(f"{spec} is {type(target).__name__}, not a kiwi_anyio.App")
    return target


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------- logging


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, ``pid``,
    ``worker`` (the index under a supervisor) and ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        worker = os.environ.get("KIWI_ANYIO_WORKER")
        if worker is not None:
            entry["worker"] = int(worker) if worker.isdigit() else worker
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=repr)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Log to stderr at ``level`` (``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``) as ``text``
    or ``json`` lines; replaces the root logger's handlers."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        worker = os.environ.get("KIWI_ANYIO_WORKER")
        tag = f"worker {worker} " if worker is not None else ""
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s %(levelname)s [{tag}pid %(process)d] %(name)s: %(message)s"
            )
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def exit_leaving_threads(code: int) -> None:
    """Exit with ``code`` now if plain-function handlers still run in worker threads (they
    outlived the drain: their tasks were requeued, and threads cannot be cancelled), instead
    of letting the interpreter wait for them; return otherwise."""
    current = threading.current_thread()
    waiting = [t for t in threading.enumerate() if t is not current and not t.daemon]
    deadline = time.monotonic() + 0.5  # idle pool threads are on their way out
    for thread in waiting:
        thread.join(max(0.0, deadline - time.monotonic()))
    busy = [t for t in waiting if t.is_alive()]
    if not busy:
        return
    logger.warning(
        "%d handler thread(s) still running after the drain (their tasks were requeued): "
        "exiting without them",
        len(busy),
    )
    _flush_logs()
    os._exit(code)


def _exit_now(why: str) -> None:
    logger.warning("%s: stopping at once; the broker redelivers unfinished tasks", why)
    _flush_logs()
    os._exit(EXIT_FORCED)


# --------------------------------------------------------------------------- health


class SystemdNotifier:
    """``sd_notify(3)`` without libsystemd, for ``Type=notify`` units: ``READY=1`` once the
    worker is first healthy, ``WATCHDOG=1`` while every process is responsive (when the unit
    has ``WatchdogSec``), ``STATUS=...`` and ``STOPPING=1`` at a stop. Does nothing without
    ``NOTIFY_SOCKET``."""

    def __init__(self, environ: Any = None) -> None:
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET") or None
        if address is not None and address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket
        self.address: str | None = address
        usec, pid = environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID")
        mine = not pid or (pid.isdigit() and int(pid) == os.getpid())
        self.watchdog = int(usec) / 1e6 if usec and usec.isdigit() and mine else None
        self.ready = False
        self.stopping = False
        self._status = ""

    @property
    def enabled(self) -> bool:
        """True under systemd (``NOTIFY_SOCKET`` is set)."""
        return self.address is not None

    def send(self, *lines: str) -> None:
        """Send ``KEY=VALUE`` lines (errors are logged, not raised)."""
        if self.address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            logger.warning("cannot notify systemd at %s: %s", self.address, exc)

    def update(self, healthy: bool, status: str) -> None:
        """The worker's health changed: READY=1 the first time it is healthy."""
        lines = [] if status == self._status else [f"STATUS={status}"]
        self._status = status
        if healthy and not self.ready and not self.stopping:
            self.ready = True
            lines.append("READY=1")
        if lines:
            self.send(*lines)

    def stop(self) -> None:
        """The worker stops: STOPPING=1 (once)."""
        if not self.stopping:
            self.stopping = True
            self.send("STOPPING=1", "STATUS=stopping: draining")


class HealthReporter:
    """Serves the health of a worker: ``GET /healthz`` on ``port``, a file, and systemd's
    notifications (``notifier``).

    :meth:`update` sets the report; :meth:`run` serves it until cancelled (and removes the
    file when it ends).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        file: str | os.PathLike[str] | None = None,
        interval: float = 5.0,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.port = port
        self.host = host
        self.file = Path(file) if file is not None else None
        self.interval = interval
        self.notifier = notifier if notifier is not None and notifier.enabled else None
        self.healthy = False
        self.alive = True
        self.report: dict[str, Any] = {"status": "starting"}
        self._changed: anyio.Event | None = None

    @property
    def enabled(self) -> bool:
        """True if there is an endpoint, a file or systemd to serve."""
        return self.port is not None or self.file is not None or self.notifier is not None

    def update(self, healthy: bool, *, alive: bool = True, **report: Any) -> None:
        """Set the health and the report's fields (``status`` is set from ``healthy``).

        ``alive`` (every process responsive, whatever the broker does) keeps systemd's
        watchdog fed.
        """
        self.healthy = healthy
        self.alive = alive
        self.report = {"status": "ok" if healthy else "unhealthy", **report}
        if self.notifier is not None:
            state = report.get("state")
            if state == "stopping":
                self.notifier.stop()
            detail = "connected and consuming" if healthy else "not connected or not consuming"
            self.notifier.update(healthy, f"{self.report['status']}: {detail}")
        if self._changed is not None:
            self._changed.set()

    def stopping(self) -> None:
        """The worker stops (tells systemd)."""
        if self.notifier is not None:
            self.notifier.stop()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[int | None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled; ``task_status.started`` gets the endpoint's port."""
        self._changed = anyio.Event()
        async with anyio.create_task_group() as tg:
            port = None
            if self.port is not None:
                listener = await anyio.create_tcp_listener(
                    local_host=self.host, local_port=self.port, reuse_port=False
                )
                port = listener.extra(anyio.abc.SocketAttribute.local_port)
                tg.start_soon(listener.serve, self._answer)
                logger.info("health check on http://%s:%s/healthz", self.host, port)
            task_status.started(port)
            watchdog = self.notifier.watchdog if self.notifier is not None else None
            if self.file is None and watchdog is None:
                await anyio.sleep_forever()
                return
            every = min(self.interval, watchdog / 3 if watchdog else self.interval)
            try:
                while True:
                    if self.file is not None:
                        self._write_file()
                    if watchdog and self.notifier is not None and self.alive:
                        self.notifier.send("WATCHDOG=1")
                    with anyio.move_on_after(every):
                        await self._changed.wait()
                    self._changed = anyio.Event()
            finally:
                if self.file is not None:
                    with contextlib.suppress(OSError):
                        self.file.unlink()

    def _write_file(self) -> None:
        assert self.file is not None
        if not self.healthy:
            with contextlib.suppress(OSError):
                self.file.unlink()
            return
        report = {**self.report, "time": time.time()}
        temporary = self.file.with_name(f".{self.file.name}.{os.getpid()}")
        try:
            temporary.write_text(json.dumps(report) + "\n")
            os.replace(temporary, self.file)
        except OSError as exc:
            logger.warning("cannot write the health file %s: %s", self.file, exc)

    async def _answer(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            request = b""
            with anyio.move_on_after(5):
                while b"\r\n\r\n" not in request and len(request) < 8192:
                    try:
                        request += await stream.receive(4096)
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        break
            words = request.split(b"\r\n", 1)[0].split()
            path = words[1].split(b"?", 1)[0] if len(words) >= 2 else b""
            if path in (b"/healthz", b"/health", b"/livez", b"/readyz", b"/"):
                code, reason = (200, "OK") if self.healthy else (503, "Service Unavailable")
                body = json.dumps(self.report).encode()
            else:
                code, reason, body = 404, "Not Found", b'{"status": "not found"}'
            head = (
                f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await stream.send(head.encode() + body)


# --------------------------------------------------------------------------- the socket pair


def _send_line(channel: socket.socket, line: str) -> None:
    """Send one line without blocking; a peer that does not read (or is gone) loses it."""
    with contextlib.suppress(OSError):  # BlockingIOError included
        channel.send(line.encode() + b"\n")


async def _receive(channel: socket.socket) -> bytes:
    """The next bytes from the (non-blocking) socket; ``b""`` at its end or on an error."""
    while True:
        try:
            return channel.recv(1024)
        except BlockingIOError:
            pass
        except OSError:
            return b""
        await _wait_readable(channel)


async def _wait_readable(channel: socket.socket) -> None:
    wait = getattr(anyio, "wait_readable", None)  # anyio >= 4.7
    if wait is None:  # pragma: no cover - older anyio
        wait = anyio.wait_socket_readable
    await wait(channel)


# --------------------------------------------------------------------------- one process


def run_in_process(
    app: App,
    *,
    url: str | None = None,
    backend: str = "asyncio",
    drain_timeout: float | None = None,
    health: HealthReporter | None = None,
    supervised_fd: int | None = None,
    report_every: float = CHILD_REPORT_MAX_EVERY,
) -> None:
    """Serve ``app`` in this process until a signal (see the module's docstring).

    ``supervised_fd`` is the socket to a supervisor, told the status every ``report_every``
    seconds.

    Raises:
        ConnectionFailed: the broker cannot be reached or refused the login.
        Exception: what a startup hook raised.
    """
    channel = socket.socket(fileno=supervised_fd) if supervised_fd is not None else None
    if channel is not None:
        channel.setblocking(False)
    try:
        anyio.run(
            _in_process, app, url, drain_timeout, health, channel, report_every, backend=backend
        )
    except BaseExceptionGroup as group:
        raise _leaf(group) from None
    finally:
        if channel is not None:
            with contextlib.suppress(OSError):
                channel.shutdown(socket.SHUT_RDWR)
            channel.close()


def _leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


async def _in_process(
    app: App,
    url: str | None,
    drain_timeout: float | None,
    health: HealthReporter | None,
    channel: socket.socket | None,
    report_every: float,
) -> None:
    def report(status: AppStatus) -> None:
        if health is not None:
            health.update(
                status.healthy,
                state=status.state,
                connected=status.connected,
                consuming=status.consuming,
                pid=os.getpid(),
                app=app.name,
            )
        if channel is not None:
            _send_line(channel, f"status {status.state} {int(status.connected)}")

    app.add_status_listener(report)
    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_watch_signals, signals, app)
                if channel is not None:
                    tg.start_soon(_watch_supervisor, channel, app)
                    tg.start_soon(_report_every, report, app, report_every)
                if health is not None and health.enabled:
                    report(app.status)
                    await tg.start(health.run)
                await app.serve(url, drain_timeout=drain_timeout)
                tg.cancel_scope.cancel()
    finally:
        app.remove_status_listener(report)


async def _watch_signals(signals: Any, app: App) -> None:
    seen = 0
    async for signum in signals:
        seen += 1
        name = signal.Signals(signum).name
        if seen == 1:
            logger.warning(
                "%s: stopping gracefully (running handlers get %s s; send it again to stop "
                "at once)",
                name,
                app.drain_timeout if app.comm is None else app.comm.drain_timeout,
            )
            app.stop()
            app._stop_requested = True  # a stop during the start is seen once connected
        else:
            _exit_now(f"{name} again")


async def _report_every(report: Callable[[AppStatus], None], app: App, every: float) -> None:
    """Tell the supervisor the status now and then: its silence means a blocked loop."""
    while True:
        await anyio.sleep(every)
        report(app.status)


async def _watch_supervisor(channel: socket.socket, app: App) -> None:
    buffer = b""
    while True:
        try:
            chunk = await _receive(channel)
        except OSError:
            chunk = b""
        if not chunk:
            logger.warning("the supervisor is gone: stopping gracefully")
            app.stop()
            app._stop_requested = True
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line == b"stop":
                if app.status.state in ("starting", "running"):
                    logger.info("the supervisor says stop: stopping gracefully")
                app.stop()
                app._stop_requested = True
            elif line == b"kill":
                _exit_now("the supervisor says stop at once")


# --------------------------------------------------------------------------- the supervisor


@dataclass
class WorkerConfig:
    """What ``kiwi-anyio worker`` was asked for (the supervisor passes it to its children)."""

    app: str
    url: str
    backend: str = "asyncio"
    workers: int = 1
    drain_timeout: float | None = None
    log_level: str = "INFO"
    log_format: str = "text"
    health_interval: float = 5.0

    @property
    def report_every(self) -> float:
        """How often a child reports its status."""
        return min(CHILD_REPORT_MAX_EVERY, self.health_interval / 2)

    @property
    def silence_limit(self) -> float:
        """A child silent this long is unresponsive (unhealthy)."""
        return max(1.0, 3 * self.health_interval)

    def child_command(self, fd: int) -> list[str]:
        """The command line of a supervised child (the URL goes in its environment, as
        ``KIWI_ANYIO_URL``: a password on a command line is visible to every user)."""
        command = [sys.executable, "-m", "kiwi_anyio", "worker", self.app, "--workers", "1"]
        command += ["--backend", self.backend]
        command += ["--log-level", self.log_level, "--log-format", self.log_format]
        command += ["--health-interval", str(self.health_interval)]
        if self.drain_timeout is not None:
            command += ["--drain-timeout", str(self.drain_timeout)]
        return [*command, "--supervised-fd", str(fd)]


@dataclass
class _Child:
    index: int
    process: anyio.abc.Process | None = None
    channel: socket.socket | None = None
    state: str = "stopped"
    connected: bool = False
    restarts: int = 0
    last_exit: int | None = None  # the exit code of the previous process in this slot
    last_seen: float = 0.0  # time.monotonic() of its last report
    silence_limit: float = 15.0

    @property
    def responsive(self) -> bool:
        return time.monotonic() - self.last_seen < self.silence_limit

    def send(self, line: str) -> None:
        if self.channel is not None:
            _send_line(self.channel, line)

    def describe(self) -> dict[str, Any]:
        pid = self.process.pid if self.process is not None else None
        state = self.state
        if state != "stopped" and not self.responsive:
            state = "unresponsive"
        return {
            "worker": self.index,
            "pid": pid,
            "state": state,
            "connected": self.connected,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
        }


@dataclass
class _Supervisor:
    config: WorkerConfig
    health: HealthReporter | None
    children: list[_Child] = field(default_factory=list)
    stopping: anyio.Event = field(default_factory=anyio.Event)
    forced_event: anyio.Event = field(default_factory=anyio.Event)
    forced: bool = False
    ever_ready: bool = False
    failure: int | None = None  # the exit code of a failed start

    def report(self) -> None:
        if self.health is None:
            return
        healthy = all(c.state == "running" and c.connected and c.responsive for c in self.children)
        alive = all(c.responsive for c in self.children if c.state != "stopped")
        workers = [c.describe() for c in self.children]
        self.health.update(healthy, alive=alive, pid=os.getpid(), workers=workers)

    def stop(self, forced: bool = False) -> None:
        if self.health is not None:
            self.health.stopping()
        if forced:
            self.forced = True
            self.forced_event.set()
        self.stopping.set()
        for child in self.children:
            child.send("kill" if forced else "stop")


def supervise(config: WorkerConfig, health: HealthReporter | None = None) -> int:
    """Run ``config.workers`` child processes until a signal; returns the exit code.

    A child that exits (crashed, killed) is restarted after a backoff (0.5 s doubling to
    30 s; reset once a child ran for 10 s). The first SIGINT/SIGTERM asks every child to
    stop gracefully and waits for them (exit 0); a second one makes them exit at once
    (exit 130). A child that fails to start with exit code 2 or 3 before any child was
    ready stops them all with that code.
    """
    return int(anyio.run(_supervise, config, health, backend=config.backend))


async def _supervise(config: WorkerConfig, health: HealthReporter | None) -> int:
    state = _Supervisor(config, health)
    state.children = [_Child(i, silence_limit=config.silence_limit) for i in range(config.workers)]
    state.report()
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_supervisor_signals, signals, state)
            if health is not None and health.enabled:
                await tg.start(health.run)
                tg.start_soon(_refresh_health, state)
            logger.info(
                "supervisor (pid %d): starting %d workers of %s",
                os.getpid(),
                len(state.children),
                config.app,
            )
            async with anyio.create_task_group() as children:
                for child in state.children:
                    children.start_soon(_keep_running, state, child)
            tg.cancel_scope.cancel()
    if state.failure is not None:
        return state.failure
    if state.forced:
        return EXIT_FORCED
    logger.info("supervisor: every worker stopped")
    return EXIT_OK


async def _refresh_health(state: _Supervisor) -> None:
    """Report again every second, so that a child that fell silent turns unhealthy."""
    while True:
        await anyio.sleep(1.0)
        state.report()


async def _supervisor_signals(signals: Any, state: _Supervisor) -> None:
    seen = 0
    async for signum in signals:
        seen += 1
        name = signal.Signals(signum).name
        if seen == 1:
            timeout = state.config.drain_timeout
            logger.warning(
                "supervisor: %s: stopping the workers gracefully (drain timeout %s; send it "
                "again to stop at once)",
                name,
                "the app's" if timeout is None else f"{timeout} s",
            )
            state.stop()
        else:
            logger.warning("supervisor: %s again: stopping the workers at once", name)
            state.stop(forced=True)


async def _keep_running(state: _Supervisor, child: _Child) -> None:
    failures = 0
    while not state.stopping.is_set():
        started = time.monotonic()
        code = await _run_child(state, child)
        child.last_exit = code
        ran = time.monotonic() - started
        if state.stopping.is_set():
            return
        if not state.ever_ready and code in (EXIT_USAGE, EXIT_CANNOT_CONNECT):
            logger.error("supervisor: worker %d could not start (exit code %d)", child.index, code)
            state.failure = code
            state.stop()
            return
        failures = 1 if ran >= RESTART_RESET_AFTER else failures + 1
        delay = min(RESTART_MAX_DELAY, RESTART_FIRST_DELAY * 2 ** (failures - 1))
        logger.warning(
            "supervisor: worker %d exited with %s after %.1f s; restarting in %.1f s",
            child.index,
            _describe_exit(code),
            ran,
            delay,
        )
        with anyio.move_on_after(delay):
            await state.stopping.wait()
        child.restarts += 1


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"code {code}"


async def _run_child(state: _Supervisor, child: _Child) -> int:
    ours, theirs = socket.socketpair()
    env = dict(
        os.environ,
        KIWI_ANYIO_URL=state.config.url,
        KIWI_ANYIO_WORKER=str(child.index),
        PYTHONUNBUFFERED="1",
    )
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):  # systemd: the supervisor's
        env.pop(name, None)
    try:
        process = await anyio.open_process(
            state.config.child_command(theirs.fileno()),
            stdin=None,
            stdout=None,
            stderr=None,
            pass_fds=[theirs.fileno()],
            env=env,
        )
    finally:
        theirs.close()
    ours.setblocking(False)
    child.process, child.channel = process, ours
    child.state, child.connected = "starting", False
    child.last_seen = time.monotonic()
    if state.stopping.is_set():  # the stop came while the child was being started
        child.send("kill" if state.forced else "stop")
    state.report()
    logger.info("supervisor: started worker %d (pid %d)", child.index, process.pid)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_read_child, state, child, ours)
            with anyio.CancelScope(shield=True):
                code = await _wait_child(state, process)
            tg.cancel_scope.cancel()
    finally:
        with contextlib.suppress(OSError):
            ours.shutdown(socket.SHUT_RDWR)
        ours.close()
        child.channel = None
        child.state, child.connected = "stopped", False
        state.report()
    return code


async def _wait_child(state: _Supervisor, process: anyio.abc.Process) -> int:
    """The child's exit code; SIGKILL for a child that outlives a forced stop."""
    async with anyio.create_task_group() as tg:

        async def enforce() -> None:
            await state.stopping.wait()
            drain = state.config.drain_timeout
            deadline = (60.0 if drain is None else drain) + 30.0  # settles, shutdown hooks
            with anyio.move_on_after(deadline):
                await state.forced_event.wait()
                await anyio.sleep(KILL_GRACE)
            with contextlib.suppress(ProcessLookupError):
                process.kill()

        tg.start_soon(enforce)
        code = await process.wait()
        tg.cancel_scope.cancel()
    return code


async def _read_child(state: _Supervisor, child: _Child, channel: socket.socket) -> None:
    buffer = b""
    while True:
        chunk = await _receive(channel)
        if not chunk:
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            words = line.decode(errors="replace").split()
            if len(words) == 3 and words[0] == "status":
                child.last_seen = time.monotonic()
                child.state, child.connected = words[1], words[2] == "1"
                if child.state == "running":
                    state.ever_ready = True
                state.report()


def format_exception_line(error: BaseException) -> str:
    """``Type: message`` on one line (for the worker's error messages)."""
    return _one_line(error)


def log_failure(error: BaseException, what: str) -> None:
    """Log ``error`` with its traceback (at ERROR) as ``what``."""
    logger.error(
        "%s: %s\n%s",
        what,
        _one_line(error),
        "".join(traceback.format_exception(error)).rstrip(),
    )
