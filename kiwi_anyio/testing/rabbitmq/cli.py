"""The command line ``python -m kiwi_anyio.testing.rabbitmq``: :func:`main`.

``python -m kiwi_anyio.testing.rabbitmq [--no-tls] [--rabbitmq4 ROOT | --also-rabbitmq4
ROOT] -- CMD ARGS...`` starts a broker (or two), runs ``CMD`` with the ``KIWI_ANYIO_TEST_*``
(and ``KIWI_ANYIO_TEST4_*``) variables set, stops the brokers whatever happens and exits with
``CMD``'s exit code. This module owns the options, the signal handling that passes signals on
to the command and insists when it does not end, and when to reap the orphans it adopts as a
subreaper meanwhile (with the helpers of ``_processes``). ``__main__`` only calls
:func:`main`, so that the package can export it without importing ``__main__``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

from ._processes import (
    _LIVE_CHILDREN,
    _become_subreaper,
    _reap_adopted,
    _reap_children,
)
from .broker import RabbitMQBroker
from .errors import BrokerStartError
from .info import ENV4_PREFIX, ENV_PREFIX, BrokerInfo


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
