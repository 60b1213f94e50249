"""A cluster of private RabbitMQ nodes on this machine: :class:`RabbitMQCluster`.

Its nodes (``_ClusterNode``, a :class:`~kiwi_anyio.testing.rabbitmq.RabbitMQBroker` each)
share one Erlang cookie and one ``epmd`` that the cluster runs; this module owns choosing
their ports, booting and joining them, stopping and crashing single nodes, and the stop at
interpreter exit of a cluster left running.
"""

from __future__ import annotations

import atexit
import contextlib
import math
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
from typing import Any

from ._processes import (
    _BASE_PORT_MAX,
    _BASE_PORT_MIN,
    _LIVE_CHILDREN,
    _MARK_VAR,
    _OFFSET_AMQP,
    _OFFSET_CTL_MAX,
    _OFFSET_CTL_MIN,
    _OFFSET_DIST,
    _OFFSET_EPMD,
    _PORT_SPAN,
    _epmd_answers,
    _epmd_path,
    _forget_reaped,
    _marked_pids,
    _port_free,
    _signal_pid,
    _wait_gone,
)
from .broker import _LOG_TAIL_LINES, RabbitMQBroker
from .errors import BrokerCtlError, BrokerError, BrokerStartError


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
        _forget_reaped()

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
