"""Processes, ports and signals of the private brokers, and the children they leave.

This module owns the one list of live broker children (``_LIVE_CHILDREN``), the port layout
of a broker (``_PORT_SPAN`` consecutive loopback ports from a base port), the environment
mark (``KIWI_ANYIO_BROKER_MARK``) by which a broker's processes are found in ``/proc``, and
the helpers that signal, wait for and reap them; also :func:`amqp_probe`, the check that a
broker answers, and the tail of a log file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import BrokerStartError

AMQP_PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"


# Each broker uses PORT_SPAN consecutive ports from its base port.
_OFFSET_AMQP = 0
_OFFSET_TLS = 1
_OFFSET_DIST = 2
_OFFSET_EPMD = 3
_OFFSET_CTL_MIN = 4
_OFFSET_CTL_MAX = 13  # ten ports: ten rabbitmqctl calls may run at once
_PORT_SPAN = 14
# Below Linux's ephemeral range (32768-60999), so outgoing connections do not take them.
_BASE_PORT_MIN = 20000
_BASE_PORT_MAX = 32768 - _PORT_SPAN

_MARK_VAR = "KIWI_ANYIO_BROKER_MARK"

# Popen objects of brokers still running, kept referenced so that a broker left running on
# purpose (started by an attached broker for its owner to stop) is not garbage-collected
# with a ResourceWarning.
_LIVE_CHILDREN: list[subprocess.Popen[bytes]] = []


def _forget_reaped() -> None:
    """Drop the children that have ended from ``_LIVE_CHILDREN``."""
    for proc in list(_LIVE_CHILDREN):
        if proc.poll() is not None:
            with contextlib.suppress(ValueError):  # cluster nodes start in threads
                _LIVE_CHILDREN.remove(proc)


def _epmd_path() -> str:
    found = shutil.which("epmd") or shutil.which("epmd", path="/usr/lib/erlang/bin")
    if found is None:
        raise BrokerStartError("epmd not found (is Erlang / rabbitmq-server installed?)")
    return found


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from the state on (state, ppid, pgrp, session, ...)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return data[data.rfind(")") + 2 :].split()


def _pid_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (``kill -0`` succeeds on zombies)."""
    fields = _proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X", "x")


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _marked_pids(mark: str) -> list[int]:
    """Live processes whose environment has ``KIWI_ANYIO_BROKER_MARK=<mark>``."""
    needle = f"{_MARK_VAR}={mark}".encode()
    found: list[int] = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        if needle in environ.split(b"\0") and _pid_alive(int(entry)):
            found.append(int(entry))
    return found


def _signal_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _wait_gone(
    pids: Sequence[int], timeout: float, reap: Sequence[subprocess.Popen[bytes]] = ()
) -> bool:
    """Wait until none of ``pids`` is alive; ``reap`` are Popen objects to poll meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        for proc in reap:
            proc.poll()
        if not any(_pid_alive(pid) for pid in pids):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _port_free(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:port (TIME_WAIT left-overs do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _epmd_answers(port: int) -> bool:
    """True if an epmd on 127.0.0.1:port answers a NAMES request."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"\x00\x01n")  # NAMES_REQ: length 1, code 110
            return len(sock.recv(4)) > 0
    except OSError:
        return False


def amqp_probe(host: str, port: int, timeout: float = 2.0) -> bool:
    """True if an AMQP 0-9-1 server answers the protocol header at host:port.

    Sends ``AMQP\\x00\\x00\\x09\\x01`` and expects a method frame (type 1) on channel 0, the
    server's Connection.Start.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(AMQP_PROTOCOL_HEADER)
            header = b""
            while len(header) < 7:
                chunk = sock.recv(7 - len(header))
                if not chunk:
                    return False
                header += chunk
    except OSError:
        return False
    return header[0] == 1 and int.from_bytes(header[1:3], "big") == 0


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * lines))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def _become_subreaper() -> None:
    """Adopt orphaned descendants (PR_SET_CHILD_SUBREAPER), to reap them instead of PID 1.

    A test that restarts the broker through an attached handle leaves the new node's processes
    to this process once the test command exits; PID 1 may not reap them promptly.
    """
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _reap_adopted(keep: set[int]) -> None:
    """Reap zombie children other than ``keep`` (orphans adopted as a subreaper).

    The node and rabbitmqctl run ``epmd -daemon`` checks and port helpers whose orphans end up
    here; reaping them by pid leaves the exit codes of our own children to their Popen objects.
    """
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in keep:
            continue
        fields = _proc_stat(int(entry))
        if fields is not None and fields[0] == "Z" and fields[1] == str(me):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(entry), os.WNOHANG)


def _reap_children() -> None:
    """Reap every child that has exited (adopted orphans included)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
