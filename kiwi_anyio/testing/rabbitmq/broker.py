"""One private, throwaway RabbitMQ node: :class:`RabbitMQBroker`.

A broker has its own temporary directory (data, logs, configuration, ``broker.json`` and a
``HOME`` holding a random Erlang cookie), its own node name, free loopback ports and its own
``epmd``; it runs the system's ``rabbitmq-server`` or, with ``root=``, the one of a Debian tree
(:mod:`kiwi_anyio.testing.rabbitmq.tree`). This module owns its life cycle (start, stop,
restart, kill, attach from another process), ``rabbitmqctl`` and the stop at interpreter
exit of a broker left running; what goes into its files comes from ``config`` and
``certificates``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from ._processes import (
    _BASE_PORT_MAX,
    _BASE_PORT_MIN,
    _LIVE_CHILDREN,
    _OFFSET_AMQP,
    _OFFSET_CTL_MAX,
    _OFFSET_CTL_MIN,
    _OFFSET_DIST,
    _OFFSET_EPMD,
    _OFFSET_TLS,
    _PORT_SPAN,
    _cmdline,
    _epmd_answers,
    _epmd_path,
    _forget_reaped,
    _marked_pids,
    _pid_alive,
    _port_free,
    _signal_pid,
    _tail,
    _wait_gone,
    amqp_probe,
)
from .certificates import (
    _definitions,
    _make_certificates,
    _trustme_available,
)
from .config import _node_env, _rabbitmq_conf
from .errors import BrokerCtlError, BrokerError, BrokerStartError
from .info import BrokerInfo
from .tree import (
    _ROOT_BIN_DIR,
    _ROOT_EPMD,
    DEFAULT_RABBITMQ4_ROOT,
    RABBITMQ_4_3_DEFAULTS,
    _check_root,
    _in_root_command,
    _rabbitmq_version,
)

_STATE_FILE = "broker.json"
_LOG_TAIL_LINES = 60


def _rabbitmq_bin_dir() -> Path:
    return Path(os.environ.get("KIWI_ANYIO_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))


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
        _forget_reaped()
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
        _check_root(root)

    def _env(self) -> dict[str, str]:
        """The environment for epmd, rabbitmq-server and rabbitmqctl (paths as they see them)."""
        return _node_env(
            self.home,
            self._inner,
            node=self._node,
            base_port=self._base_port,
            epmd_port=self.epmd_port,
            root=self._root,
        )

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
            (home / "definitions.json").write_text(json.dumps(_definitions(), indent=2))
            if self._tls:
                _make_certificates(home / "tls")
        except BaseException:
            shutil.rmtree(home, ignore_errors=True)
            self._home = None
            raise

    def _write_config(self) -> None:
        home = self.home
        port = self.port
        tls_port = self.tls_port if self._tls else None
        text = _rabbitmq_conf(
            home, self._inner, port=port, tls_port=tls_port, extra_config=self.extra_config
        )
        (home / "rabbitmq.conf").write_text(text)

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
                _forget_reaped()
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
        _forget_reaped()
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
        _forget_reaped()


def _stop_at_exit(ref: weakref.ReferenceType[RabbitMQBroker]) -> None:
    broker = ref()
    if broker is not None:
        with contextlib.suppress(Exception):
            broker.stop()
