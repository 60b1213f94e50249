"""The supervisor: N child processes of ``kiwi-anyio worker``, restarted when they die.

Owns: starting each child (its command line, its environment, its end of the socket pair),
restarting it with backoff, the health of them all, and stopping them: ``stop`` at the first
signal, ``kill`` at the second, SIGKILL for a child that outlives either. Must not touch: what a
child does (``_child.py``), the health endpoint itself (``_health.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from ._health import HealthReporter
from ._pipe import CHILD_REPORT_MAX_EVERY, receive_lines, send_line
from ._setup import EXIT_CANNOT_CONNECT, EXIT_FORCED, EXIT_OK, EXIT_USAGE, count_signals

logger = logging.getLogger("kiwi_anyio.worker")

#: A child that ran at least this long before it died is restarted without backoff.
RESTART_RESET_AFTER = 10.0
RESTART_FIRST_DELAY = 0.5
RESTART_MAX_DELAY = 30.0
#: How long children get to exit after ``kill`` before they get SIGKILL.
KILL_GRACE = 3.0


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
            send_line(self.channel, line)

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
    def first(name: str) -> None:
        timeout = state.config.drain_timeout
        logger.warning(
            "supervisor: %s: stopping the workers gracefully (drain timeout %s; send it "
            "again to stop at once)",
            name,
            "the app's" if timeout is None else f"{timeout} s",
        )
        state.stop()

    def again(name: str) -> None:
        logger.warning("supervisor: %s again: stopping the workers at once", name)
        state.stop(forced=True)

    await count_signals(signals, first, again)


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
    async for line in receive_lines(channel):
        words = line.decode(errors="replace").split()
        if len(words) == 3 and words[0] == "status":
            child.last_seen = time.monotonic()
            child.state, child.connected = words[1], words[2] == "1"
            if child.state == "running":
                state.ever_ready = True
            state.report()
