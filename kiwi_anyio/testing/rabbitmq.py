"""Private, throwaway RabbitMQ brokers for tests.

:class:`RabbitMQBroker` starts a RabbitMQ node of its own: its own temporary directory (data,
logs, configuration, and a ``HOME`` holding a random Erlang cookie), its own node name, free
loopback ports and its own ``epmd``. Nothing is shared with a system broker, so several test
runs can go on side by side on one machine. It needs the Debian ``rabbitmq-server`` package
(``/usr/lib/rabbitmq/bin``; ``KIWI_ANYIO_RABBITMQ_BIN`` points elsewhere) and, for TLS, the
``trustme`` package::

    with RabbitMQBroker() as broker:
        print(broker.url, broker.tls_url, broker.ctl("list_vhosts"))

:class:`RabbitMQCluster` starts several such nodes (one shared cookie and ``epmd``) and joins
them into one cluster, for failover tests::

    with RabbitMQCluster(3) as cluster:
        url = cluster.url()  # every node in one URL
        cluster.stop_node(0)

Every broker has the users ``guest`` (password ``guest``, administrator) and ``kiwi-client``
(for EXTERNAL authentication with :attr:`RabbitMQBroker.client_cert_pem_path`) and the virtual
hosts ``/`` and ``kiwi-test``, both users having every permission on both.

A broker can also run from a Debian tree of its own (``root=``): its binaries and Erlang come
from that tree, each of its processes runs chrooted there with a private ``/proc`` mount
(``unshare --mount``: nothing stays mounted once the processes end), and its temporary
directory lives below ``ROOT/tmp``. :func:`ensure_rabbitmq4_root` builds (once, then reuses) a
Debian 13 "trixie" tree holding RabbitMQ 4 with ``debootstrap``, and
:meth:`RabbitMQBroker.rabbitmq4` makes a broker on it configured like RabbitMQ 4.3's defaults
(:data:`RABBITMQ_4_3_DEFAULTS`: no transient non-exclusive queues, no global QoS)::

    root = ensure_rabbitmq4_root()  # /var/cache/kiwi-anyio/rabbitmq4-trixie
    with RabbitMQBroker.rabbitmq4(root) as broker:
        print(broker.server_version)  # 4.0.5

As a command, ``python -m kiwi_anyio.testing.rabbitmq [--no-tls] -- CMD ARGS...`` starts a
broker, runs ``CMD`` with the ``KIWI_ANYIO_TEST_*`` environment variables set (see
:meth:`RabbitMQBroker.test_env`), stops the broker whatever happens and exits with ``CMD``'s
exit code. Without ``CMD`` it keeps the broker up until interrupted. ``--rabbitmq4 ROOT``
starts the RabbitMQ 4 broker of the tree ``ROOT`` instead of the system's; ``--also-rabbitmq4
ROOT`` starts both and describes the second with the ``KIWI_ANYIO_TEST4_*`` variables.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

__all__ = [
    "DEFAULT_RABBITMQ4_ROOT",
    "RABBITMQ_4_3_DEFAULTS",
    "BrokerCtlError",
    "BrokerError",
    "BrokerInfo",
    "BrokerStartError",
    "RabbitMQBroker",
    "RabbitMQCluster",
    "ensure_rabbitmq4_root",
    "main",
]

#: The AMQP 0-9-1 protocol header a client sends first.
AMQP_PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

#: Names of the environment variables given to the command run by :func:`main`.
ENV_URL = "KIWI_ANYIO_TEST_URL"
ENV_TLS_URL = "KIWI_ANYIO_TEST_TLS_URL"
ENV_CA = "KIWI_ANYIO_TEST_CA"
ENV_CLIENT_CERT = "KIWI_ANYIO_TEST_CLIENT_CERT"
ENV_CLIENT_KEY = "KIWI_ANYIO_TEST_CLIENT_KEY"
ENV_BROKER_HOME = "KIWI_ANYIO_TEST_BROKER_HOME"
ENV_BROKER_ROOT = "KIWI_ANYIO_TEST_BROKER_ROOT"
ENV_BROKER_VERSION = "KIWI_ANYIO_TEST_BROKER_VERSION"
#: The prefix of the variables above (``KIWI_ANYIO_TEST_URL`` is ``ENV_PREFIX + "URL"``).
ENV_PREFIX = "KIWI_ANYIO_TEST_"
#: The prefix of the variables describing the second broker of ``--also-rabbitmq4``
#: (``KIWI_ANYIO_TEST4_URL``, ``KIWI_ANYIO_TEST4_BROKER_HOME``, ...).
ENV4_PREFIX = "KIWI_ANYIO_TEST4_"
# BrokerInfo field -> variable name without the prefix
_ENV_FIELDS = {
    "url": "URL",
    "tls_url": "TLS_URL",
    "ca": "CA",
    "client_cert": "CLIENT_CERT",
    "client_key": "CLIENT_KEY",
    "home": "BROKER_HOME",
    "root": "BROKER_ROOT",
    "version": "BROKER_VERSION",
}

#: Where :func:`ensure_rabbitmq4_root` keeps its tree unless told otherwise (outside any
#: checkout, so that it survives between test runs on one machine).
DEFAULT_RABBITMQ4_ROOT = Path("/var/cache/kiwi-anyio/rabbitmq4-trixie")
#: The Debian release whose ``rabbitmq-server`` (4.0.x) the tree holds.
RABBITMQ4_SUITE = "trixie"
#: ``rabbitmq.conf`` lines that make RabbitMQ 4.0 refuse what 4.3 refuses by default: a queue
#: that is neither durable nor exclusive (541 INTERNAL_ERROR) and ``basic.qos`` with
#: ``global=true``.
RABBITMQ_4_3_DEFAULTS: tuple[str, ...] = (
    "deprecated_features.permit.transient_nonexcl_queues = false",
    "deprecated_features.permit.global_qos = false",
)

#: The user that EXTERNAL authentication with the client certificate logs in as.
CLIENT_CERT_USER = "kiwi-client"
#: The extra virtual host every broker has.
TEST_VHOST = "kiwi-test"

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

_STATE_FILE = "broker.json"
# Distribution on loopback only; never run "epmd -daemon" (the broker has its own epmd).
_SERVER_ERL_ARGS = "-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false"
_CTL_ERL_ARGS = "-start_epmd false"
_MARK_VAR = "KIWI_ANYIO_BROKER_MARK"
_LOG_TAIL_LINES = 60

# Popen objects of brokers still running, kept referenced so that a broker left running on
# purpose (started by an attached broker for its owner to stop) is not garbage-collected
# with a ResourceWarning.
_LIVE_CHILDREN: list[subprocess.Popen[bytes]] = []


class BrokerError(RuntimeError):
    """A private broker could not be started, stopped or managed."""


class BrokerStartError(BrokerError):
    """The broker did not start; the message ends with the tail of its logs."""


class BrokerCtlError(BrokerError):
    """``rabbitmqctl`` exited with a non-zero code; the message holds its output."""

    def __init__(self, message: str, returncode: int, output: str) -> None:
        super().__init__(message)
        #: The exit code of rabbitmqctl.
        self.returncode = returncode
        #: What rabbitmqctl printed (stdout and stderr).
        self.output = output


@dataclasses.dataclass(frozen=True)
class BrokerInfo:
    """Where a test broker is and how to reach it (what :func:`main` exports to its command)."""

    #: ``amqp://guest:guest@127.0.0.1:PORT/``
    url: str
    #: ``amqps://guest:guest@localhost:TLS_PORT/``, or None without TLS.
    tls_url: str | None = None
    #: Path of the CA certificate (PEM) that signed the server's and the client's certificate.
    ca: str | None = None
    #: Path of the client certificate (PEM, CN ``kiwi-client``) for EXTERNAL authentication.
    client_cert: str | None = None
    #: Path of the client certificate's private key (PEM).
    client_key: str | None = None
    #: The broker's temporary directory (for :meth:`RabbitMQBroker.attach`), if known.
    home: str | None = None
    #: The Debian tree the broker runs from (``root=``), None for the system's broker.
    root: str | None = None
    #: The RabbitMQ version, such as ``3.10.8`` or ``4.0.5``, if known.
    version: str | None = None

    def to_env(self, prefix: str = ENV_PREFIX) -> dict[str, str]:
        """The ``KIWI_ANYIO_TEST_*`` environment variables describing this broker.

        ``prefix`` replaces ``KIWI_ANYIO_TEST_`` (:data:`ENV4_PREFIX` for a second broker).
        """
        pairs = {prefix + name: getattr(self, field) for field, name in _ENV_FIELDS.items()}
        return {key: value for key, value in pairs.items() if value}

    @classmethod
    def env_names(cls, prefix: str = ENV_PREFIX) -> list[str]:
        """Every variable name :meth:`to_env` may set with ``prefix``."""
        return [prefix + name for name in _ENV_FIELDS.values()]

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, prefix: str = ENV_PREFIX
    ) -> BrokerInfo | None:
        """Read the ``KIWI_ANYIO_TEST_*`` variables; None when ``KIWI_ANYIO_TEST_URL`` is unset.

        ``prefix`` replaces ``KIWI_ANYIO_TEST_`` (:data:`ENV4_PREFIX` for a second broker).
        """
        env = os.environ if environ is None else environ
        url = env.get(prefix + "URL")
        if not url:
            return None

        def get(field: str) -> str | None:
            return env.get(prefix + _ENV_FIELDS[field]) or None

        return cls(
            url=url,
            tls_url=get("tls_url"),
            ca=get("ca"),
            client_cert=get("client_cert"),
            client_key=get("client_key"),
            home=get("home"),
            root=get("root"),
            version=get("version"),
        )


def _rabbitmq_bin_dir() -> Path:
    return Path(os.environ.get("KIWI_ANYIO_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))


# Where a Debian tree (``root=``) has RabbitMQ's scripts and epmd, as seen inside it.
_ROOT_BIN_DIR = "/usr/lib/rabbitmq/bin"
_ROOT_EPMD = "/usr/bin/epmd"
_ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Runs "CMD ARGS..." chrooted in "$0" in a mount namespace of its own with /proc mounted there:
# the mount is private to the processes started from it and goes away when the last one ends.
# unshare and chroot exec (no fork), so the command keeps the pid the launcher sees.
_IN_ROOT_SCRIPT = 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"'


def _in_root_command(root: Path, argv: Sequence[str]) -> list[str]:
    """``argv`` (paths as seen inside ``root``) run chrooted in ``root`` with its own /proc."""
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    return [
        unshare,
        "--mount",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        _IN_ROOT_SCRIPT,
        str(root),
        *argv,
    ]


def _rabbitmq_version(bin_dir: Path) -> str | None:
    """The version of the RabbitMQ whose scripts are in ``bin_dir`` (``lib/rabbitmq_server-V``)."""
    found = sorted((bin_dir.parent / "lib").glob("rabbitmq_server-*"))
    if not found:
        return None
    return found[-1].name.removeprefix("rabbitmq_server-")


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


def _rabbit_password_hash(password: str) -> str:
    """The hash RabbitMQ's ``rabbit_password_hashing_sha256`` stores for ``password``."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


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


def _trustme_available() -> bool:
    try:
        import trustme  # noqa: F401
    except ImportError:
        return False
    return True


class RabbitMQBroker:
    """A private, throwaway RabbitMQ node on loopback ports.

    ``tls`` adds a TLS listener (certificates made with ``trustme``; ignored when ``trustme``
    is not installed, see :attr:`tls_enabled`) that also offers EXTERNAL authentication with
    the client certificate. ``plugins`` are the RabbitMQ plugins to enable.

    ``root`` runs the broker from a Debian tree (such as :func:`ensure_rabbitmq4_root` makes)
    instead of the system's ``rabbitmq-server``: epmd, the node and ``rabbitmqctl`` run
    chrooted there, each through ``unshare --mount`` with a private ``/proc`` mount, and the
    temporary directory is made below ``ROOT/tmp`` (:attr:`home` is its path from outside; the
    broker sees it without the ``ROOT`` prefix). This needs root privileges (chroot, mount).
    ``extra_config`` are lines appended to the node's ``rabbitmq.conf``
    (:data:`RABBITMQ_4_3_DEFAULTS`, for instance); :meth:`rabbitmq4` combines both.

    Use :meth:`start` and :meth:`stop`, or the broker as a context manager. :meth:`restart`
    keeps the data directory (durable queues survive), :meth:`kill` crashes the node for fault
    tests. :meth:`attach` gives another process a handle on a running broker.
    """

    def __init__(
        self,
        tls: bool = True,
        plugins: Sequence[str] = ("rabbitmq_auth_mechanism_ssl",),
        *,
        startup_timeout: float = 60.0,
        root: str | os.PathLike[str] | None = None,
        extra_config: Sequence[str] = (),
    ) -> None:
        #: Whether TLS was asked for.
        self.tls_requested = tls
        #: The plugins enabled on the node.
        self.plugins: tuple[str, ...] = tuple(plugins)
        #: Lines appended to the node's ``rabbitmq.conf``.
        self.extra_config: tuple[str, ...] = tuple(extra_config)
        self._root = None if root is None else Path(root).absolute()
        #: Seconds :meth:`start` waits for the broker to answer before it gives up.
        self.startup_timeout = startup_timeout
        #: Seconds the last :meth:`start` or :meth:`restart` took until the broker answered.
        self.last_start_seconds: float | None = None
        self._tls = tls and _trustme_available()
        self._home: Path | None = None
        self._owns_home = True
        self._node = ""
        self._base_port = 0
        self._server: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        self._server_pid: int | None = None
        self._epmd_pid: int | None = None
        self._running = False
        self._atexit_registered = False
        # where the temporary directory is made
        self._home_parent: Path | None = None if self._root is None else self._root / "tmp"

    @classmethod
    def rabbitmq4(
        cls,
        root: str | os.PathLike[str] = DEFAULT_RABBITMQ4_ROOT,
        tls: bool = True,
        plugins: Sequence[str] = ("rabbitmq_auth_mechanism_ssl",),
        *,
        startup_timeout: float = 60.0,
    ) -> RabbitMQBroker:
        """A broker running the RabbitMQ 4 of the tree ``root`` (see
        :func:`ensure_rabbitmq4_root`), configured with :data:`RABBITMQ_4_3_DEFAULTS`."""
        return cls(
            tls=tls,
            plugins=plugins,
            startup_timeout=startup_timeout,
            root=root,
            extra_config=RABBITMQ_4_3_DEFAULTS,
        )

    # -- public properties -------------------------------------------------------------------

    @property
    def home(self) -> Path:
        """The broker's temporary directory (data, logs, config, certificates, ``broker.json``)."""
        if self._home is None:
            raise BrokerError("the broker has not been started")
        return self._home

    @property
    def node(self) -> str:
        """The Erlang node name, ``kiwi-<random>@localhost``."""
        if not self._node:
            raise BrokerError("the broker has not been started")
        return self._node

    @property
    def root(self) -> Path | None:
        """The Debian tree the broker runs from, or None for the system's ``rabbitmq-server``."""
        return self._root

    @property
    def server_version(self) -> str | None:
        """The RabbitMQ version the broker runs (``3.10.8``, ``4.0.5``), read from the
        installed files; None if they do not say."""
        if self._root is None:
            return _rabbitmq_version(_rabbitmq_bin_dir())
        return _rabbitmq_version(self._root / _ROOT_BIN_DIR.lstrip("/"))

    @property
    def running(self) -> bool:
        """Whether this handle started (or attached to) the node and has not stopped it."""
        return self._running

    @property
    def tls_enabled(self) -> bool:
        """Whether the broker has a TLS listener (asked for and ``trustme`` importable)."""
        return self._tls

    @property
    def port(self) -> int:
        """The AMQP port on 127.0.0.1."""
        if not self._base_port:
            raise BrokerError("the broker has not been started")
        return self._base_port + _OFFSET_AMQP

    @property
    def tls_port(self) -> int:
        """The AMQPS port on 127.0.0.1 (:class:`BrokerError` without TLS)."""
        self._require_tls()
        return self._base_port + _OFFSET_TLS

    @property
    def dist_port(self) -> int:
        """The Erlang distribution port of the node."""
        return self.port - _OFFSET_AMQP + _OFFSET_DIST

    @property
    def epmd_port(self) -> int:
        """The port of the node's own epmd."""
        return self.port - _OFFSET_AMQP + _OFFSET_EPMD

    @property
    def url(self) -> str:
        """``amqp://guest:guest@127.0.0.1:PORT/``"""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def tls_url(self) -> str:
        """``amqps://guest:guest@localhost:TLS_PORT/`` (:class:`BrokerError` without TLS)."""
        return f"amqps://guest:guest@localhost:{self.tls_port}/"

    @property
    def ca_pem_path(self) -> Path:
        """The CA certificate (PEM) that signed the server and client certificates."""
        self._require_tls()
        return self.home / "tls" / "ca.pem"

    @property
    def client_cert_pem_path(self) -> Path:
        """A client certificate (PEM) for CN ``kiwi-client``, for EXTERNAL authentication."""
        self._require_tls()
        return self.home / "tls" / "client_cert.pem"

    @property
    def client_key_pem_path(self) -> Path:
        """The private key (PEM) of :attr:`client_cert_pem_path`."""
        self._require_tls()
        return self.home / "tls" / "client_key.pem"

    def info(self) -> BrokerInfo:
        """A :class:`BrokerInfo` for this broker."""
        root = None if self._root is None else str(self._root)
        version = self.server_version
        if not self._tls:
            return BrokerInfo(url=self.url, home=str(self.home), root=root, version=version)
        return BrokerInfo(
            url=self.url,
            tls_url=self.tls_url,
            ca=str(self.ca_pem_path),
            client_cert=str(self.client_cert_pem_path),
            client_key=str(self.client_key_pem_path),
            home=str(self.home),
            root=root,
            version=version,
        )

    def test_env(self) -> dict[str, str]:
        """The ``KIWI_ANYIO_TEST_*`` environment variables for a test command.

        ``KIWI_ANYIO_TEST_URL``, ``KIWI_ANYIO_TEST_BROKER_HOME`` and, with TLS,
        ``KIWI_ANYIO_TEST_TLS_URL``, ``KIWI_ANYIO_TEST_CA``, ``KIWI_ANYIO_TEST_CLIENT_CERT``
        and ``KIWI_ANYIO_TEST_CLIENT_KEY``; ``KIWI_ANYIO_TEST_BROKER_VERSION`` when the version
        is known and ``KIWI_ANYIO_TEST_BROKER_ROOT`` for a broker with ``root``.
        """
        return self.info().to_env()

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the node and wait until it answers AMQP (:class:`BrokerStartError` if not).

        A fresh handle makes a new temporary directory and picks free ports; a handle whose
        node was killed (:meth:`kill`) or attached starts the node again on its data directory.
        On failure everything started is stopped and the temporary directory removed.
        """
        if self._running and self._beam_alive():
            raise BrokerError(f"the broker {self._node} is already running")
        fresh = self._home is None
        if fresh:
            self._prepare_home()
        else:
            self._stop_processes(graceful=True)  # what a kill() left: epmd, the server script
        try:
            self._launch(pick_ports=fresh)
        except BaseException:
            if fresh:
                self.stop()
            else:
                self._stop_processes(graceful=False)
            raise
        if self._owns_home and not self._atexit_registered:
            atexit.register(_stop_at_exit, weakref.ref(self))
            self._atexit_registered = True

    def stop(self) -> None:
        """Stop the node (SIGTERM, SIGKILL after 15 s) and its epmd; remove the directory.

        Idempotent. A handle made by :meth:`attach` leaves the directory to the broker's owner.
        """
        if self._home is None:
            return
        try:
            self._stop_processes(graceful=True)
        finally:
            if self._owns_home:
                shutil.rmtree(self._home, ignore_errors=True)
                self._home = None
            self._running = False

    def restart(self) -> None:
        """Stop the node gracefully and start it again on the same data directory and ports.

        Durable queues and persistent messages survive.
        """
        if self._home is None:
            raise BrokerError("the broker has not been started")
        self._stop_processes(graceful=True)
        self._launch(pick_ports=False)

    def kill(self) -> None:
        """Crash the node: SIGKILL to the Erlang VM (epmd and the data directory stay).

        :meth:`start` or :meth:`restart` brings it back on the same data directory and ports.
        """
        reap = [p for p in (self._server,) if p is not None]
        beam = self._beam_pid()
        if beam is not None:
            _signal_pid(beam, signal.SIGKILL)
            _wait_gone([beam], 10.0, reap)
        # The rabbitmq-server script reaps the VM and ends; then sweep what may be left.
        if self._server_pid is not None:
            _wait_gone([self._server_pid], 5.0, reap)
        others = [pid for pid in _marked_pids(str(self.home)) if pid != self._epmd_pid]
        for pid in others:
            _signal_pid(pid, signal.SIGKILL)
        _wait_gone(others, 10.0, reap)
        self._forget_reaped()
        self._running = False

    def __enter__(self) -> RabbitMQBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @classmethod
    def attach(cls, home: str | os.PathLike[str]) -> RabbitMQBroker:
        """A handle on the broker whose temporary directory is ``home``, started elsewhere.

        :meth:`ctl`, :meth:`kill`, :meth:`restart` and :meth:`stop` work on it (through the pid
        file); :meth:`stop` leaves the directory for the broker's owner to remove.
        """
        path = Path(home)
        try:
            state = json.loads((path / _STATE_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise BrokerError(f"no broker state in {path}: {exc}") from exc
        broker = cls(
            tls=bool(state["tls"]),
            plugins=state["plugins"],
            root=state.get("root"),
            extra_config=state.get("extra_config", ()),
        )
        broker._tls = bool(state["tls"])
        broker._home = path
        broker._owns_home = False
        broker._node = str(state["node"])
        broker._base_port = int(state["port"]) - _OFFSET_AMQP
        broker._epmd_pid = state.get("epmd_pid")
        broker._server_pid = state.get("server_pid")
        broker._running = broker._beam_alive()
        return broker

    # -- control -----------------------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -q ARGS...`` against this node and return its standard output.

        Raises :class:`BrokerCtlError` (with the output) on a non-zero exit.
        """
        cmd = self._command(self._bin("rabbitmqctl"), "-q", "-n", self.node, *args)
        try:
            proc = subprocess.run(
                cmd,
                env=self._env(),
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BrokerCtlError(
                f"rabbitmqctl {' '.join(args)} timed out after {timeout} s", -1, ""
            ) from exc
        out = proc.stdout.decode("utf-8", "replace")
        if proc.returncode != 0:
            output = out + proc.stderr.decode("utf-8", "replace")
            raise BrokerCtlError(
                f"rabbitmqctl {' '.join(args)} exited with {proc.returncode}:\n{output}",
                proc.returncode,
                output,
            )
        return out

    def log_tail(self, n: int = _LOG_TAIL_LINES) -> str:
        """The last ``n`` lines of each of the broker's log files and of its stdout/stderr."""
        if self._home is None:
            return "(no broker directory)"
        files = sorted((self._home / "log").glob("*.log"))
        files += [self._home / "server.stdout", self._home / "server.stderr"]
        files.append(self._home / "epmd.stdout")
        parts = []
        for path in files:
            text = _tail(path, n)
            if text.strip():
                parts.append(f"==> {path} <==\n{text}")
        return "\n".join(parts) if parts else "(the broker wrote no logs)"

    # -- internals ---------------------------------------------------------------------------

    def _require_tls(self) -> None:
        if not self._tls:
            raise BrokerError("this broker has no TLS listener")
        if self._home is None:
            raise BrokerError("the broker has not been started")

    def _inner(self, path: Path) -> str:
        """``path`` (below :attr:`root` for a broker with ``root``) as the broker sees it."""
        if self._root is None:
            return str(path)
        return "/" + str(path.relative_to(self._root))

    def _bin(self, name: str) -> str:
        """The path of RabbitMQ's script ``name`` as the broker sees it."""
        if self._root is None:
            return str(_rabbitmq_bin_dir() / name)
        return f"{_ROOT_BIN_DIR}/{name}"

    def _command(self, *argv: str) -> list[str]:
        """The command line running ``argv`` (paths as the broker sees them)."""
        if self._root is None:
            return list(argv)
        return _in_root_command(self._root, argv)

    def _check_root(self) -> None:
        """For a broker with ``root``: fail early and clearly if the tree or chroot is unusable."""
        root = self._root
        if root is None:
            return
        server = root / _ROOT_BIN_DIR.lstrip("/") / "rabbitmq-server"
        if not server.exists():
            raise BrokerStartError(
                f"{server} not found: {root} is no RabbitMQ tree (see ensure_rabbitmq4_root)"
            )
        try:
            proc = subprocess.run(
                _in_root_command(root, ["/bin/true"]),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=30.0,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BrokerStartError(f"cannot run a command chrooted in {root}: {exc}") from exc
        if proc.returncode != 0:
            raise BrokerStartError(
                f"cannot run a command chrooted in {root} with its own /proc (needs root and "
                f"unshare): exit code {proc.returncode}: "
                f"{proc.stderr.decode('utf-8', 'replace').strip()}"
            )

    def _env(self) -> dict[str, str]:
        """The environment for epmd, rabbitmq-server and rabbitmqctl (paths as they see them)."""
        home = self.home
        inner = self._inner
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_", "KIWI_ANYIO_"))
            and key not in ("NOTIFY_SOCKET", "CONF_ENV_FILE")
        }
        base = self._base_port
        if self._root is not None:
            env["PATH"] = _ROOT_PATH
        env.update(
            {
                "HOME": inner(home),
                _MARK_VAR: str(home),
                "LANG": "C.UTF-8",
                "LC_ALL": "C.UTF-8",
                "RABBITMQ_NODENAME": self._node,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(base + _OFFSET_AMQP),
                "RABBITMQ_DIST_PORT": str(base + _OFFSET_DIST),
                "RABBITMQ_CTL_DIST_PORT_MIN": str(base + _OFFSET_CTL_MIN),
                "RABBITMQ_CTL_DIST_PORT_MAX": str(base + _OFFSET_CTL_MAX),
                "ERL_EPMD_PORT": str(self.epmd_port),
                "ERL_EPMD_ADDRESS": "127.0.0.1",
                "ERL_CRASH_DUMP": inner(home / "erl_crash.dump"),
                "RABBITMQ_CONF_ENV_FILE": inner(home / "rabbitmq-env.conf"),
                "RABBITMQ_CONFIG_FILE": inner(home / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": inner(home / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": inner(home / "enabled_plugins"),
                "RABBITMQ_PLUGINS_EXPAND_DIR": inner(home / "plugins-expand"),
                "RABBITMQ_MNESIA_BASE": inner(home / "mnesia"),
                "RABBITMQ_LOG_BASE": inner(home / "log"),
                "RABBITMQ_PID_FILE": inner(home / "beam.pid"),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": _SERVER_ERL_ARGS,
                "RABBITMQ_CTL_ERL_ARGS": _CTL_ERL_ARGS,
            }
        )
        return env

    def _prepare_home(self) -> None:
        home = Path(tempfile.mkdtemp(prefix="kiwi-rabbitmq-", dir=self._home_parent))
        self._home = home
        self._owns_home = True
        self._node = f"kiwi-{secrets.token_hex(4)}@localhost"
        try:
            for sub in ("mnesia", "log", "plugins-expand"):
                (home / sub).mkdir()
            cookie = home / ".erlang.cookie"
            cookie.write_text(secrets.token_hex(20).upper())
            cookie.chmod(0o400)
            (home / "rabbitmq-env.conf").write_text("")
            plugins = ",".join(self.plugins)
            (home / "enabled_plugins").write_text(f"[{plugins}].\n")
            (home / "definitions.json").write_text(json.dumps(self._definitions(), indent=2))
            if self._tls:
                self._make_certificates(home / "tls")
        except BaseException:
            shutil.rmtree(home, ignore_errors=True)
            self._home = None
            raise

    @staticmethod
    def _definitions() -> dict[str, Any]:
        users = ("guest", CLIENT_CERT_USER)
        vhosts = ("/", TEST_VHOST)
        algorithm = "rabbit_password_hashing_sha256"
        return {
            "users": [
                {
                    "name": "guest",
                    "password_hash": _rabbit_password_hash("guest"),
                    "hashing_algorithm": algorithm,
                    "tags": "administrator",
                },
                {
                    "name": CLIENT_CERT_USER,
                    "password_hash": _rabbit_password_hash(secrets.token_hex(16)),
                    "hashing_algorithm": algorithm,
                    "tags": "",
                },
            ],
            "vhosts": [{"name": vhost} for vhost in vhosts],
            "permissions": [
                {"user": user, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
                for user in users
                for vhost in vhosts
            ],
        }

    @staticmethod
    def _make_certificates(directory: Path) -> None:
        import trustme

        directory.mkdir()
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(directory / "ca.pem"))
        server = ca.issue_cert("localhost", "127.0.0.1", "::1")
        server.private_key_pem.write_to_path(str(directory / "server_key.pem"))
        with open(directory / "server_cert.pem", "wb") as f:
            for blob in server.cert_chain_pems:
                f.write(blob.bytes())
        client = ca.issue_cert(CLIENT_CERT_USER, common_name=CLIENT_CERT_USER)
        client.private_key_pem.write_to_path(str(directory / "client_key.pem"))
        client.cert_chain_pems[0].write_to_path(str(directory / "client_cert.pem"))

    def _write_config(self) -> None:
        home = self.home
        lines = [
            f"listeners.tcp.default = 127.0.0.1:{self.port}",
            "log.console = false",
            "log.file.level = info",
            f"load_definitions = {self._inner(home / 'definitions.json')}",
        ]
        if self._tls:
            tls = home / "tls"
            lines += [
                f"listeners.ssl.default = 127.0.0.1:{self.tls_port}",
                f"ssl_options.cacertfile = {self._inner(tls / 'ca.pem')}",
                f"ssl_options.certfile = {self._inner(tls / 'server_cert.pem')}",
                f"ssl_options.keyfile = {self._inner(tls / 'server_key.pem')}",
                "ssl_options.verify = verify_peer",
                "ssl_options.fail_if_no_peer_cert = false",
                "auth_mechanisms.1 = PLAIN",
                "auth_mechanisms.2 = AMQPLAIN",
                "auth_mechanisms.3 = EXTERNAL",
                "ssl_cert_login_from = common_name",
            ]
        lines += self.extra_config
        (home / "rabbitmq.conf").write_text("\n".join(lines) + "\n")

    def _ports_free(self, base: int) -> bool:
        offsets = [_OFFSET_AMQP, _OFFSET_DIST, _OFFSET_EPMD]
        offsets += range(_OFFSET_CTL_MIN, _OFFSET_CTL_MAX + 1)
        if self._tls:
            offsets.append(_OFFSET_TLS)
        return all(_port_free(base + offset) for offset in offsets)

    def _launch(self, *, pick_ports: bool) -> None:
        """Start epmd and the node; wait until AMQP answers."""
        t0 = time.monotonic()
        self._check_root()
        rng = random.SystemRandom()
        for attempt in range(20 if pick_ports else 1):
            if pick_ports:
                self._base_port = rng.randrange(_BASE_PORT_MIN, _BASE_PORT_MAX)
                if not self._ports_free(self._base_port):
                    continue
            elif not self._ports_free(self._base_port):
                raise BrokerStartError(
                    f"ports {self._base_port}..{self._base_port + _PORT_SPAN - 1} of broker "
                    f"{self._node} are taken by another process"
                )
            if self._start_epmd():
                break
            if attempt == 19 or not pick_ports:
                raise BrokerStartError(
                    f"epmd did not start on port {self.epmd_port}\n{self.log_tail()}"
                )
        else:
            raise BrokerStartError("found no free range of ports for a broker")
        self._write_config()
        self._start_server()
        self._write_state()
        self._wait_ready(t0)
        self._running = True
        self.last_start_seconds = time.monotonic() - t0

    def _start_epmd(self) -> bool:
        home = self.home
        with open(home / "epmd.stdout", "ab") as out:
            epmd = _epmd_path() if self._root is None else _ROOT_EPMD
            proc = subprocess.Popen(
                self._command(epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"),
                env=self._env(),
                cwd=home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _LIVE_CHILDREN.append(proc)
        self._epmd = proc
        self._epmd_pid = proc.pid
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._forget_reaped()
                self._epmd = None
                self._epmd_pid = None
                return False
            if _epmd_answers(self.epmd_port):
                return True
            time.sleep(0.02)
        self._stop_epmd()
        return False

    def _start_server(self) -> None:
        home = self.home
        with contextlib.suppress(FileNotFoundError):
            (home / "beam.pid").unlink()
        server = self._bin("rabbitmq-server")
        if self._root is None and not Path(server).exists():
            raise BrokerStartError(f"{server} not found: install Debian's rabbitmq-server")
        with (
            open(home / "server.stdout", "ab") as out,
            open(home / "server.stderr", "ab") as err,
        ):
            proc = subprocess.Popen(
                self._command(server),
                env=self._env(),
                cwd=home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # setsid: a terminal's Ctrl-C does not reach the node
            )
        _LIVE_CHILDREN.append(proc)
        self._server = proc
        self._server_pid = proc.pid

    def _wait_ready(self, t0: float) -> None:
        deadline = t0 + self.startup_timeout
        while True:
            if amqp_probe("127.0.0.1", self.port, timeout=2.0):
                return
            server_pid = self._server_pid
            if server_pid is not None:
                if self._server is not None:
                    self._server.poll()
                if not _pid_alive(server_pid) and not self._beam_alive():
                    code = self._server.returncode if self._server is not None else None
                    reason = f"the broker exited (code {code}) before answering AMQP"
                    break
            if time.monotonic() >= deadline:
                reason = f"the broker did not answer AMQP within {self.startup_timeout:.0f} s"
                break
            time.sleep(0.1)
        tail = self.log_tail()
        self._stop_processes(graceful=False)
        raise BrokerStartError(
            f"{reason} (node {self._node}, port {self.port}, directory {self._home})\n{tail}"
        )

    def _write_state(self) -> None:
        home = self.home
        state = {
            "node": self._node,
            "home": str(home),
            "port": self.port,
            "tls": self._tls,
            "tls_port": self._base_port + _OFFSET_TLS if self._tls else None,
            "dist_port": self.dist_port,
            "epmd_port": self.epmd_port,
            "ctl_ports": [self._base_port + _OFFSET_CTL_MIN, self._base_port + _OFFSET_CTL_MAX],
            "plugins": list(self.plugins),
            "root": None if self._root is None else str(self._root),
            "extra_config": list(self.extra_config),
            "version": self.server_version,
            "pid_file": str(home / "beam.pid"),
            "server_pid": self._server_pid,
            "epmd_pid": self._epmd_pid,
            "url": self.url,
        }
        tmp = home / f".{_STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, home / _STATE_FILE)

    def _read_state(self) -> None:
        """Refresh the pids from ``broker.json`` (an attached handle may have restarted)."""
        if self._home is None:
            return
        try:
            state = json.loads((self._home / _STATE_FILE).read_text())
        except (OSError, ValueError):
            return
        if state.get("server_pid") != self._server_pid and self._server is not None:
            self._server.poll()
        self._server_pid = state.get("server_pid")
        self._epmd_pid = state.get("epmd_pid")

    def _beam_pid(self) -> int | None:
        """The Erlang VM's pid from the pid file, if that process is alive and is a beam."""
        if self._home is None:
            return None
        try:
            pid = int((self._home / "beam.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        if _pid_alive(pid) and "beam" in _cmdline(pid):
            return pid
        return None

    def _beam_alive(self) -> bool:
        return self._beam_pid() is not None

    def _stop_processes(self, *, graceful: bool) -> None:
        """Stop the node, its epmd and anything else they left, and reap our children."""
        if self._home is None:
            return
        self._read_state()
        reap = [p for p in (self._server, self._epmd) if p is not None]
        beam = self._beam_pid()
        if beam is not None:
            if graceful:
                _signal_pid(beam, signal.SIGTERM)
                if not _wait_gone([beam], 15.0, reap):
                    _signal_pid(beam, signal.SIGKILL)
            else:
                _signal_pid(beam, signal.SIGKILL)
            _wait_gone([beam], 10.0, reap)
        server = self._server_pid
        if server is not None and _pid_alive(server):
            # The rabbitmq-server script ends by itself once the VM has gone.
            _wait_gone([server], 2.0 if beam is not None else 0.0, reap)
        self._stop_epmd()
        # Whatever is left of this broker (the server script, helpers, a racing rabbitmqctl).
        left = _marked_pids(str(self._home))
        for pid in left:
            _signal_pid(pid, signal.SIGKILL)
        if not _wait_gone(left, 10.0, reap):
            still = [pid for pid in left if _pid_alive(pid)]
            raise BrokerError(f"processes {still} of broker {self._node} do not end")
        for proc in reap:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1.0)
        self._forget_reaped()
        self._server = None
        self._running = False

    def _stop_epmd(self) -> None:
        pid = self._epmd_pid
        reap = [self._epmd] if self._epmd is not None else []
        if pid is not None and _pid_alive(pid) and "epmd" in _cmdline(pid):
            _signal_pid(pid, signal.SIGTERM)
            if not _wait_gone([pid], 2.0, reap):
                _signal_pid(pid, signal.SIGKILL)
                _wait_gone([pid], 5.0, reap)
        for proc in reap:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1.0)
        self._epmd = None
        self._forget_reaped()

    @staticmethod
    def _forget_reaped() -> None:
        for proc in list(_LIVE_CHILDREN):
            if proc.poll() is not None:
                with contextlib.suppress(ValueError):  # cluster nodes start in threads
                    _LIVE_CHILDREN.remove(proc)


def _stop_at_exit(ref: weakref.ReferenceType[RabbitMQBroker]) -> None:
    broker = ref()
    if broker is not None:
        with contextlib.suppress(Exception):
            broker.stop()


# -- clusters --------------------------------------------------------------------------------


class _ClusterNode(RabbitMQBroker):
    """A node of a :class:`RabbitMQCluster`: the cluster's cookie and epmd, ports given to it."""

    def __init__(
        self,
        parent: Path,
        cookie: str,
        epmd_port: int,
        base_port: int,
        *,
        startup_timeout: float,
    ) -> None:
        super().__init__(tls=False, plugins=(), startup_timeout=startup_timeout)
        self._home_parent = parent
        self._cookie = cookie
        self._shared_epmd_port = epmd_port
        self._base_port = base_port

    @property
    def epmd_port(self) -> int:
        """The port of the cluster's epmd, shared by every node."""
        return self._shared_epmd_port

    def halt(self) -> None:
        """Stop the node gracefully, keeping its data directory (:meth:`start` brings it back
        as a member of the cluster)."""
        self._stop_processes(graceful=True)

    def _prepare_home(self) -> None:
        super()._prepare_home()
        cookie = self.home / ".erlang.cookie"
        cookie.chmod(0o600)
        cookie.write_text(self._cookie)
        cookie.chmod(0o400)

    def _launch(self, *, pick_ports: bool) -> None:
        super()._launch(pick_ports=False)  # the cluster chose the ports

    def _start_epmd(self) -> bool:
        return _epmd_answers(self._shared_epmd_port)  # the cluster runs it

    def _ports_free(self, base: int) -> bool:
        return _cluster_range_free(base)


def _cluster_range_free(base: int) -> bool:
    """Whether the ports a cluster node uses from ``base`` are free (no TLS, no own epmd)."""
    offsets = [_OFFSET_AMQP, _OFFSET_DIST, *range(_OFFSET_CTL_MIN, _OFFSET_CTL_MAX + 1)]
    return all(_port_free(base + offset) for offset in offsets)


class RabbitMQCluster:
    """A RabbitMQ cluster of ``size`` private nodes on this machine, for failover tests.

    The nodes (``kiwi-<random>@localhost``) share one Erlang cookie and one ``epmd`` (which
    the cluster runs) and have their own data directories and loopback ports, all below one
    temporary directory. :meth:`start` boots them in parallel, joins nodes 2..N to node 1
    (``stop_app``, ``join_cluster``, ``start_app``) and waits until all are online; it takes
    about half a minute. No TLS, no plugins; the users and virtual hosts are those of
    :class:`RabbitMQBroker`::

        with RabbitMQCluster(3) as cluster:
            url = cluster.url()  # amqp://guest:guest@127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/
            cluster.stop_node(0)  # clients fail over to node 2 or 3
            cluster.start_node(0)  # node 1 rejoins

    :meth:`stop` (also at interpreter exit) stops every node and the epmd and removes the
    directory, whatever state the cluster is in.
    """

    def __init__(self, size: int = 3, *, startup_timeout: float = 90.0) -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        #: The number of nodes.
        self.size = size
        #: Seconds :meth:`start` waits for a node to answer AMQP.
        self.startup_timeout = startup_timeout
        #: Seconds the last :meth:`start` took (booting and joining).
        self.last_start_seconds: float | None = None
        self._home: Path | None = None
        self._nodes: list[_ClusterNode] = []
        self._epmd: subprocess.Popen[bytes] | None = None
        self._epmd_port = 0
        self._atexit_registered = False

    # -- public properties -------------------------------------------------------------------

    @property
    def home(self) -> Path:
        """The cluster's temporary directory (one subdirectory per node)."""
        if self._home is None:
            raise BrokerError("the cluster has not been started")
        return self._home

    @property
    def nodes(self) -> list[RabbitMQBroker]:
        """The nodes, in order (node 0 is the one the others joined)."""
        return list(self._nodes)

    @property
    def ports(self) -> list[int]:
        """The AMQP port of each node on 127.0.0.1."""
        return [node.port for node in self._nodes]

    @property
    def urls(self) -> list[str]:
        """``amqp://guest:guest@127.0.0.1:PORT/`` of each node."""
        return [node.url for node in self._nodes]

    def url(self, first: int = 0) -> str:
        """One URL naming every node, node ``first`` first (clients try them in order)."""
        count = len(self._nodes)
        if not count:
            raise BrokerError("the cluster has not been started")
        order = [(first + k) % count for k in range(count)]
        hosts = ",".join(f"127.0.0.1:{self._nodes[i].port}" for i in order)
        return f"amqp://guest:guest@{hosts}/"

    def running(self, index: int) -> bool:
        """Whether node ``index`` is up (its Erlang VM is alive)."""
        return self._nodes[index]._beam_alive()

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Boot the nodes in parallel, form the cluster and wait until every node is online.

        On failure everything started is stopped, the directory removed, and
        :class:`BrokerStartError` raised with the nodes' log tails.
        """
        if self._home is not None:
            raise BrokerError("the cluster is already started")
        t0 = time.monotonic()
        self._home = Path(tempfile.mkdtemp(prefix="kiwi-rabbitmq-cluster-"))
        if not self._atexit_registered:
            atexit.register(_stop_cluster_at_exit, weakref.ref(self))
            self._atexit_registered = True
        try:
            cookie = secrets.token_hex(20).upper()
            bases = self._start_epmd()
            self._nodes = [
                _ClusterNode(
                    self.home, cookie, self._epmd_port, base, startup_timeout=self.startup_timeout
                )
                for base in bases
            ]
            self._boot_nodes()
            self._join_nodes()
        except BaseException:
            self.stop()
            raise
        self.last_start_seconds = time.monotonic() - t0

    def stop(self) -> None:
        """Stop every node (in parallel) and the epmd; remove the directory. Idempotent."""
        if self._home is None:
            return
        errors: list[BaseException] = []
        marks = [str(self._home)] + [str(node._home) for node in self._nodes if node._home]
        try:
            self._in_parallel([node.stop for node in self._nodes], errors)
        finally:
            self._stop_epmd()
            # whatever is left (a node's helpers, a racing rabbitmqctl)
            left = [pid for mark in marks for pid in _marked_pids(mark)]
            for pid in left:
                _signal_pid(pid, signal.SIGKILL)
            _wait_gone(left, 10.0)
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None
            self._nodes = []
        if errors:
            raise BrokerError(f"stopping the cluster failed: {errors[0]}") from errors[0]

    def stop_node(self, index: int) -> None:
        """Stop node ``index`` gracefully (SIGTERM, as an orderly shutdown); its data stays."""
        self._nodes[index].halt()

    def kill_node(self, index: int) -> None:
        """Crash node ``index`` (SIGKILL to its Erlang VM); its data stays."""
        self._nodes[index].kill()

    def start_node(self, index: int) -> None:
        """Start a stopped node again on its data directory and wait until the cluster has
        every node online."""
        node = self._nodes[index]
        if not node._beam_alive():
            node.start()
        self.await_online_nodes()

    def await_online_nodes(self, count: int | None = None, timeout: float = 60.0) -> None:
        """Wait until ``count`` (default: all) nodes are online in the cluster."""
        wanted = self.size if count is None else count
        self.ctl(
            "await_online_nodes",
            str(wanted),
            "--timeout",
            str(math.ceil(timeout)),
            timeout=timeout + 30.0,
        )

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """``rabbitmqctl -q ARGS...`` against the first node that is up."""
        for node in self._nodes:
            if node._beam_alive():
                return node.ctl(*args, timeout=timeout)
        raise BrokerError("no node of the cluster is running")

    def log_tail(self, n: int = _LOG_TAIL_LINES) -> str:
        """The log tails of every node."""
        return "\n".join(
            f"### node {i} ({node._node})\n{node.log_tail(n)}" for i, node in enumerate(self._nodes)
        )

    def __enter__(self) -> RabbitMQCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------------

    def _start_epmd(self) -> list[int]:
        """Pick free ports (epmd and one range per node) and start the shared epmd."""
        rng = random.SystemRandom()
        home = self.home
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_", "KIWI_ANYIO_"))
        }
        env.update({"HOME": str(home), _MARK_VAR: str(home)})
        for _attempt in range(20):
            bases: list[int] = []
            while len(bases) < self.size:
                base = rng.randrange(_BASE_PORT_MIN, _BASE_PORT_MAX)
                apart = all(abs(base - other) >= _PORT_SPAN for other in bases)
                if apart and _cluster_range_free(base):
                    bases.append(base)
            # the epmd takes the epmd slot of node 0's range (the nodes run no epmd of their own)
            port = bases[0] + _OFFSET_EPMD
            if not _port_free(port):
                continue
            with open(home / "epmd.stdout", "ab") as out:
                proc = subprocess.Popen(
                    [_epmd_path(), "-port", str(port), "-address", "127.0.0.1"],
                    env=env,
                    cwd=home,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            _LIVE_CHILDREN.append(proc)
            self._epmd = proc
            self._epmd_port = port
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and proc.poll() is None:
                if _epmd_answers(port):
                    return bases
                time.sleep(0.02)
            self._stop_epmd()
        raise BrokerStartError(f"could not start an epmd for the cluster in {home}")

    def _stop_epmd(self) -> None:
        proc, self._epmd = self._epmd, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5.0)
        RabbitMQBroker._forget_reaped()

    @staticmethod
    def _in_parallel(calls: Sequence[Any], errors: list[BaseException]) -> None:
        """Run the calls in threads, wait for all; append what they raised to ``errors``."""
        import threading

        def run(call: Any) -> None:
            try:
                call()
            except BaseException as exc:  # reported by the caller
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(call,), daemon=True) for call in calls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _boot_nodes(self) -> None:
        errors: list[BaseException] = []
        self._in_parallel([node.start for node in self._nodes], errors)
        if errors:
            raise BrokerStartError(f"a node of the cluster did not start: {errors[0]}") from errors[
                0
            ]

    def _join_nodes(self) -> None:
        first = self._nodes[0]
        try:
            for node in self._nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", first.node)
                node.ctl("start_app")
            self.await_online_nodes()
        except BrokerCtlError as exc:
            raise BrokerStartError(f"forming the cluster failed: {exc}\n{self.log_tail()}") from exc


def _stop_cluster_at_exit(ref: weakref.ReferenceType[RabbitMQCluster]) -> None:
    cluster = ref()
    if cluster is not None:
        with contextlib.suppress(Exception):
            cluster.stop()


# -- the RabbitMQ 4 tree ----------------------------------------------------------------------

# The stamp file of a complete tree, and the version of the recipe that made it: a tree made by
# another recipe is rebuilt.
_ROOT_STAMP = ".kiwi-anyio-root.json"
_ROOT_RECIPE = 1
_ROOT_INSTALL = (
    "apt-get update -qq"
    " && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends"
    " rabbitmq-server"
    " && apt-get clean"
)


def _root_stamp(root: Path) -> dict[str, Any] | None:
    """The stamp of a complete tree made by this recipe, or None."""
    try:
        stamp = json.loads((root / _ROOT_STAMP).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or stamp.get("recipe") != _ROOT_RECIPE:
        return None
    if not (root / _ROOT_BIN_DIR.lstrip("/") / "rabbitmq-server").exists():
        return None
    return stamp


def _host_debian_mirror() -> str | None:
    """The Debian archive this machine's apt uses (``KIWI_ANYIO_DEBIAN_MIRROR`` overrides it).

    The URI of an enabled ``deb`` source for the host's own Debian release; None when there is
    none (not Debian, or nothing found), leaving debootstrap its default.
    """
    override = os.environ.get("KIWI_ANYIO_DEBIAN_MIRROR")
    if override:
        return override
    try:
        release = dict(
            line.split("=", 1)
            for line in Path("/etc/os-release").read_text().splitlines()
            if "=" in line
        )
    except OSError:
        return None
    if release.get("ID", "").strip('"') != "debian":
        return None
    codename = release.get("VERSION_CODENAME", "").strip('"')
    if not codename:
        return None
    apt = Path("/etc/apt")
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        with contextlib.suppress(OSError):
            for stanza in path.read_text().split("\n\n"):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if ":" in line and not line.startswith(("#", " ")):
                        key, value = line.split(":", 1)
                        fields[key.strip().lower()] = value.strip()
                if (
                    "deb" in fields.get("types", "").split()
                    and codename in fields.get("suites", "").split()
                    and fields.get("enabled", "yes").lower() != "no"
                    and fields.get("uris")
                ):
                    return fields["uris"].split()[0]
    lists = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]
    for path in lists:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                words = line.split("#", 1)[0].split()
                if words[:1] != ["deb"]:
                    continue
                words = words[1:]
                if words and words[0].startswith("["):
                    while words and not words[0].endswith("]"):
                        words.pop(0)
                    words = words[1:]
                if len(words) >= 2 and words[1] == codename:
                    return words[0]
    return None


def _processes_in_tree(root: Path) -> list[int]:
    """Pids of processes whose root directory or working directory is inside ``root``."""
    found = []
    prefix = str(root).rstrip("/") + "/"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        for link in ("root", "cwd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{entry}/{link}")
                if (target + "/").startswith(prefix):
                    found.append(int(entry))
                    break
    return found


def _remove_tree(root: Path) -> None:
    """Remove a tree this module made, unless a process runs in it or something is mounted."""
    busy = _processes_in_tree(root)
    if busy:
        raise BrokerError(f"cannot remove {root}: processes {busy} run in it")
    prefix = str(root).rstrip("/") + "/"
    with open("/proc/self/mounts") as f:
        mounted = [line.split()[1] for line in f if (line.split()[1] + "/").startswith(prefix)]
    if mounted:
        raise BrokerError(f"cannot remove {root}: {mounted} are mounted in it")
    shutil.rmtree(root)


def _run_logged(cmd: Sequence[str], log_path: Path, what: str, **kwargs: Any) -> None:
    """Run ``cmd`` with its output appended to ``log_path``; BrokerError with the log's tail."""
    with open(log_path, "ab") as out:
        code = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            **kwargs,
        ).returncode
    if code != 0:
        raise BrokerError(f"{what} failed with exit code {code}:\n{_tail(log_path, 30)}")


def _build_root(dest: Path, mirror: str | None, say: Callable[[str], None]) -> dict[str, Any]:
    """Make a Debian trixie tree with rabbitmq-server in the empty directory ``dest``.

    Returns the facts for the stamp (version, seconds per step).
    """
    debootstrap = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin:/sbin")
    if debootstrap is None:
        raise BrokerError("debootstrap not found: apt-get install debootstrap")
    log_path = dest.parent / f"{dest.name}.log"  # kept after the build, for a look
    log_path.write_bytes(b"")
    t0 = time.monotonic()
    cmd = [debootstrap, "--variant=minbase", RABBITMQ4_SUITE, str(dest)]
    if mirror:
        cmd.append(mirror)
    say(f"debootstrap --variant=minbase {RABBITMQ4_SUITE} {dest} {mirror or ''}".rstrip())
    _run_logged(cmd, log_path, "debootstrap")
    t1 = time.monotonic()
    say(f"debootstrap: {t1 - t0:.1f} s")
    # No service starts from a package's postinst; the tests start their own broker.
    policy = dest / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    (dest / "etc/hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")
    with contextlib.suppress(OSError):
        shutil.copyfile("/etc/resolv.conf", dest / "etc/resolv.conf")
    env = {key: value for key, value in os.environ.items() if not key.startswith("KIWI_ANYIO_")}
    env.update({"PATH": _ROOT_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"})
    say("apt-get install rabbitmq-server (in the tree)")
    _run_logged(
        _in_root_command(dest, ["/bin/sh", "-c", _ROOT_INSTALL]),
        log_path,
        "installing rabbitmq-server in the tree",
        env=env,
    )
    t2 = time.monotonic()
    version = _rabbitmq_version(dest / _ROOT_BIN_DIR.lstrip("/"))
    if version is None:
        raise BrokerError(f"rabbitmq-server is not in {dest} after installing it")
    say(f"rabbitmq-server {version}: {t2 - t1:.1f} s")
    return {
        "recipe": _ROOT_RECIPE,
        "suite": RABBITMQ4_SUITE,
        "mirror": mirror,
        "rabbitmq": version,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "debootstrap_seconds": round(t1 - t0, 1),
        "install_seconds": round(t2 - t1, 1),
    }


def ensure_rabbitmq4_root(
    cache_dir: str | os.PathLike[str] = DEFAULT_RABBITMQ4_ROOT,
    *,
    mirror: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """A Debian 13 "trixie" tree with its ``rabbitmq-server`` (RabbitMQ 4.0) in ``cache_dir``.

    Idempotent: a complete tree (its stamp file ``.kiwi-anyio-root.json`` names this recipe)
    is reused at once. Otherwise the tree is built in ``.NAME.building`` beside it and renamed
    into place once complete, so an interrupted build is never taken for a tree: the next call
    removes what it left and starts again (``debootstrap --variant=minbase``, then ``apt-get
    install rabbitmq-server`` in the tree with services kept from starting; about half a
    minute and 500 MB). A lock file beside the tree makes concurrent calls wait for one build.

    Needs root, ``debootstrap`` and ``unshare``, and reaches Debian's archive: ``mirror``, else
    the one this machine's apt uses for its own release (``KIWI_ANYIO_DEBIAN_MIRROR``
    overrides it), else debootstrap's default. ``log`` receives progress lines (default:
    standard error). Raises :class:`BrokerError` when the build fails, or when ``cache_dir``
    exists and holds something other than a tree made here.
    """
    dest = Path(cache_dir).absolute()
    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if _root_stamp(dest) is not None:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _root_stamp(dest) is not None:
            return dest  # built by another process meanwhile
        building = dest.parent / f".{dest.name}.building"
        if building.exists():
            say(f"removing the half-made tree {building}")
            _remove_tree(building)
        if dest.exists():
            if (dest / _ROOT_STAMP).exists():
                say(f"removing the outdated or damaged tree {dest}")
                _remove_tree(dest)
            elif any(dest.iterdir()):
                raise BrokerError(f"{dest} exists and is not a tree made by ensure_rabbitmq4_root")
            else:
                dest.rmdir()
        building.mkdir()
        try:
            stamp = _build_root(
                building, mirror if mirror is not None else _host_debian_mirror(), say
            )
            (building / _ROOT_STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        except BaseException:
            with contextlib.suppress(Exception):
                _remove_tree(building)
            raise
        os.rename(building, dest)
    return dest


# -- command line ----------------------------------------------------------------------------


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


class _Interrupted(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _SignalState:
    """Signal handling of :func:`main`: stop the broker whatever ends the run."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.received_at = 0.0
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            self.received_at = time.monotonic()
        if self.stopping:
            return  # the broker is being stopped already
        if self.child is None:
            raise _Interrupted(signum)  # still starting the broker: give up on it
        if signum != signal.SIGINT and self.child.poll() is None:
            # A terminal's Ctrl-C reaches the command by itself (same process group).
            self.child.send_signal(signum)

    def wait(self, child: subprocess.Popen[bytes]) -> int:
        """Wait for the command; after a signal, insist more and more."""
        escalated: set[str] = set()
        last_reap = time.monotonic()
        while True:
            try:
                return child.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() - last_reap > 2.0:
                _reap_adopted({child.pid, *(proc.pid for proc in _LIVE_CHILDREN)})
                last_reap = time.monotonic()
            if self.signum is None:
                continue
            waited = time.monotonic() - self.received_at
            if self.signum == signal.SIGINT:
                steps = [(5.0, "int", signal.SIGINT), (20.0, "term", signal.SIGTERM)]
                steps.append((30.0, "kill", signal.SIGKILL))
            else:
                steps = [(15.0, "kill", signal.SIGKILL)]
            for after, name, sig in steps:
                if waited >= after and name not in escalated:
                    escalated.add(name)
                    with contextlib.suppress(ProcessLookupError):
                        child.send_signal(sig)


_USAGE = (
    "usage: python -m kiwi_anyio.testing.rabbitmq [--no-tls] [--rabbitmq4 ROOT | "
    "--also-rabbitmq4 ROOT] [-- CMD ARGS...]"
)


def _describe(broker: RabbitMQBroker) -> str:
    version = broker.server_version or "version unknown"
    where = f", chroot {broker.root}" if broker.root is not None else ""
    tls_note = f", {broker.tls_url}" if broker.tls_enabled else ", no TLS"
    return (
        f"broker {broker.node} (RabbitMQ {version}{where}) up at {broker.url}{tls_note} "
        f"in {broker.last_start_seconds:.1f} s (directory {broker.home})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Start a broker, run the command after ``--`` against it, stop the broker.

    Options: ``--no-tls``; ``--rabbitmq4 ROOT`` runs the RabbitMQ 4 broker of the tree ``ROOT``
    (:meth:`RabbitMQBroker.rabbitmq4`) instead of the system's; ``--also-rabbitmq4 ROOT``
    starts both, the system's described by the ``KIWI_ANYIO_TEST_*`` variables and the
    RabbitMQ 4 one by the ``KIWI_ANYIO_TEST4_*`` ones. Returns the command's exit code (128 + N
    when it died of signal N).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" in args:
        split = args.index("--")
        options, command = args[:split], args[split + 1 :]
    else:
        options, command = args, []
    tls = True
    instead: str | None = None
    also: str | None = None
    while options:
        option = options.pop(0)
        name, eq, value = option.partition("=")
        if option == "--no-tls":
            tls = False
        elif name in ("--rabbitmq4", "--also-rabbitmq4"):
            if not eq:
                if not options:
                    print(f"{name} needs a directory\n{_USAGE}", file=sys.stderr)
                    return 2
                value = options.pop(0)
            if name == "--rabbitmq4":
                instead = value
            else:
                also = value
        elif option in ("-h", "--help"):
            print(_USAGE)
            return 0
        else:
            print(f"unknown option {option!r}\n{_USAGE}", file=sys.stderr)
            return 2
    if instead is not None and also is not None:
        print(f"--rabbitmq4 and --also-rabbitmq4 exclude each other\n{_USAGE}", file=sys.stderr)
        return 2

    _become_subreaper()
    state = _SignalState()
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, state.handle) for sig in handled}
    if instead is not None:
        brokers = [RabbitMQBroker.rabbitmq4(instead, tls=tls)]
    else:
        brokers = [RabbitMQBroker(tls=tls)]
    if also is not None:
        brokers.append(RabbitMQBroker.rabbitmq4(also, tls=tls))
    prog = "kiwi_anyio.testing.rabbitmq"
    code = 0
    try:
        for broker in brokers:
            try:
                broker.start()
            except BrokerStartError as exc:
                print(f"{prog}: {exc}", file=sys.stderr, flush=True)
                return 1
            print(f"{prog}: {_describe(broker)}", flush=True)
        ours = BrokerInfo.env_names(ENV_PREFIX) + BrokerInfo.env_names(ENV4_PREFIX)
        env = {key: value for key, value in os.environ.items() if key not in ours}
        env.update(brokers[0].test_env())
        if len(brokers) > 1:
            env.update(brokers[1].info().to_env(ENV4_PREFIX))
        if command:
            child = subprocess.Popen(command, env=env)
            state.child = child
            code = state.wait(child)
            if code < 0:
                code = 128 - code
        else:
            while state.signum is None:
                time.sleep(2.0)
                _reap_adopted({proc.pid for proc in _LIVE_CHILDREN})
            code = 128 + state.signum
    except _Interrupted as exc:
        print(f"{prog}: interrupted by signal {exc.signum}, stopping the broker", flush=True)
        code = 128 + exc.signum
    except FileNotFoundError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        code = 127
    finally:
        state.stopping = True
        t0 = time.monotonic()
        try:
            _stop_all(brokers)
        finally:
            _reap_children()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if any(broker.last_start_seconds is not None for broker in brokers):
            noun = "brokers" if len(brokers) > 1 else "broker"
            print(f"{prog}: {noun} stopped in {time.monotonic() - t0:.1f} s", flush=True)
    return code


def _stop_all(brokers: Sequence[RabbitMQBroker]) -> None:
    """Stop every broker, the last started first; raise the first failure after trying all."""
    failure: BaseException | None = None
    for broker in reversed(brokers):
        try:
            broker.stop()
        except BaseException as exc:  # raised below, once every broker was tried
            failure = failure or exc
    if failure is not None:
        raise failure


if __name__ == "__main__":
    sys.exit(main())
