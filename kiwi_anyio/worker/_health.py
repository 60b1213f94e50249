"""The health of a worker: ``GET /healthz``, a health file, and systemd's notifications.

Owns: :class:`HealthReporter` (the endpoint, the file, feeding systemd's watchdog) and
:class:`SystemdNotifier` (``sd_notify(3)``). Must not touch: how the health is found out (the
child's status listener, the supervisor's reports call :meth:`HealthReporter.update`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

logger = logging.getLogger("kiwi_anyio.worker")


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
