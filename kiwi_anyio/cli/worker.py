"""``kiwi-anyio worker APP``: load a :class:`kiwi_anyio.App` and serve it, in N processes.

This module owns the checks before serving (the app imports, the URL is not memory://, the
broker accepts the login when a supervisor is to start children) and the worker's exit codes.
The serving itself (drain, supervise, health) is :mod:`kiwi_anyio.worker`'s; this module must
not build the parser or touch the message commands.
"""

from __future__ import annotations

import argparse
from typing import Any

import anyio

from .. import connect as kiwi_connect
from ..exceptions import ConnectionFailed, InvalidURL
from .output import (
    DEFAULT_URL,
    EXIT_CANNOT_CONNECT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    fail,
    leaf,
)


def run_worker(args: argparse.Namespace) -> int:
    """``kiwi-anyio worker``: load the app, check the URL, serve (supervised with N > 1)."""
    from ..protocol import parse_url
    from ..worker import (
        AppLoadError,
        HealthReporter,
        SystemdNotifier,
        WorkerConfig,
        configure_logging,
        exit_leaving_threads,
        load_app,
        log_failure,
        run_in_process,
        supervise,
    )

    configure_logging(args.log_level, args.log_format)
    try:
        app = load_app(args.app)
    except AppLoadError as exc:
        return fail(EXIT_USAGE, str(exc))
    url = args.url or app.url or DEFAULT_URL
    if url.startswith("memory:"):
        return fail(
            EXIT_USAGE,
            f"{url} is a broker inside one process: give the worker an amqp:// URL "
            "(use app.test_client() for tests on memory://)",
        )
    try:
        parse_url(url)
    except InvalidURL as exc:
        return fail(EXIT_USAGE, str(exc))
    health = HealthReporter(
        port=args.health_port,
        host=args.health_host,
        file=args.health_file,
        interval=args.health_interval,
        notifier=SystemdNotifier(),
    )
    if args.supervised_fd is not None:
        health = HealthReporter()  # the supervisor serves the health of all its children
    try:
        if args.workers > 1:
            if app._rpcs:
                return fail(
                    EXIT_USAGE,
                    f"{args.app} has RPC subscribers ({', '.join(r.identifier for r in app._rpcs)})"
                    ": an RPC identifier is unique on the broker, so serve it with --workers 1",
                )
            anyio.run(check_connection, url, app.options, backend=args.backend)
            config = WorkerConfig(
                app=args.app,
                url=url,
                backend=args.backend,
                workers=args.workers,
                # explicit, so that the supervisor knows how long a stop may take
                drain_timeout=app.drain_timeout
                if args.drain_timeout is None
                else args.drain_timeout,
                log_level=args.log_level,
                log_format=args.log_format,
                health_interval=args.health_interval,
            )
            return supervise(config, health)
        run_in_process(
            app,
            url=url,
            backend=args.backend,
            drain_timeout=args.drain_timeout,
            health=health,
            supervised_fd=args.supervised_fd,
            report_every=WorkerConfig(
                app="", url="", health_interval=args.health_interval
            ).report_every,
        )
        exit_leaving_threads(EXIT_OK)
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BaseException as raised:
        error = leaf(raised)
        if isinstance(error, InvalidURL):
            return fail(EXIT_USAGE, str(error))
        if isinstance(error, ConnectionFailed):
            return fail(EXIT_CANNOT_CONNECT, str(error))
        if isinstance(error, Exception):
            log_failure(error, f"{app.name} failed")
            return fail(EXIT_FAILED, f"{app.name} failed: {type(error).__name__}: {error}")
        raise


async def check_connection(url: str, options: dict[str, Any]) -> None:
    """Connect once, so that a bad URL or login fails in one line before any child starts."""
    async with kiwi_connect(url, **options):
        pass
