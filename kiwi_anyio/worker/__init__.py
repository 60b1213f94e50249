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

The modules, each with what it owns in its docstring (lower ones never import higher ones)::

    _supervisor.py  supervise: N children, restarts with backoff, their health, stopping them
    _child.py       run_in_process: one app in this process, its signals, its reports
    _health.py      HealthReporter (GET /healthz, the health file), SystemdNotifier
    _pipe.py        the lines on the socket pair between a supervisor and a child
    _setup.py       load_app, logging, exiting, the exit codes

The command line (:mod:`kiwi_anyio.cli`) imports every name it uses from here.

Owns: the public names of the package. Must not touch: anything beyond re-exporting them.
"""

from __future__ import annotations

from ._child import run_in_process
from ._health import HealthReporter, SystemdNotifier
from ._pipe import CHILD_REPORT_MAX_EVERY
from ._setup import (
    EXIT_CANNOT_CONNECT,
    EXIT_FAILED,
    EXIT_FORCED,
    EXIT_OK,
    EXIT_USAGE,
    AppLoadError,
    JSONFormatter,
    configure_logging,
    exit_leaving_threads,
    format_exception_line,
    load_app,
    log_failure,
)
from ._supervisor import (
    KILL_GRACE,
    RESTART_FIRST_DELAY,
    RESTART_MAX_DELAY,
    RESTART_RESET_AFTER,
    WorkerConfig,
    supervise,
)

__all__ = [
    "CHILD_REPORT_MAX_EVERY",
    "EXIT_CANNOT_CONNECT",
    "EXIT_FAILED",
    "EXIT_FORCED",
    "EXIT_OK",
    "EXIT_USAGE",
    "KILL_GRACE",
    "RESTART_FIRST_DELAY",
    "RESTART_MAX_DELAY",
    "RESTART_RESET_AFTER",
    "AppLoadError",
    "HealthReporter",
    "JSONFormatter",
    "SystemdNotifier",
    "WorkerConfig",
    "configure_logging",
    "exit_leaving_threads",
    "format_exception_line",
    "load_app",
    "log_failure",
    "run_in_process",
    "supervise",
]
