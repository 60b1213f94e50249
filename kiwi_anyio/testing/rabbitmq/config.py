"""What a private node is told: its ``rabbitmq.conf`` and the environment of its processes.

Both name the node's files as the node sees them (``inner``: a broker with ``root=`` sees its
directory without the tree's prefix).
:class:`~kiwi_anyio.testing.rabbitmq.RabbitMQBroker` writes the configuration into its directory
and gives the environment to epmd, ``rabbitmq-server`` and ``rabbitmqctl``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ._processes import _MARK_VAR, _OFFSET_AMQP, _OFFSET_CTL_MAX, _OFFSET_CTL_MIN, _OFFSET_DIST
from .tree import _ROOT_PATH

# Distribution on loopback only; never run "epmd -daemon" (the broker has its own epmd).
_SERVER_ERL_ARGS = "-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false"
_CTL_ERL_ARGS = "-start_epmd false"


def _node_env(
    home: Path,
    inner: Callable[[Path], str],
    *,
    node: str,
    base_port: int,
    epmd_port: int,
    root: Path | None,
) -> dict[str, str]:
    """The environment for epmd, rabbitmq-server and rabbitmqctl (paths as they see them).

    ``home`` is the node's directory, ``inner`` names a path as the node sees it.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RABBITMQ_", "ERL_", "KIWI_ANYIO_"))
        and key not in ("NOTIFY_SOCKET", "CONF_ENV_FILE")
    }
    base = base_port
    if root is not None:
        env["PATH"] = _ROOT_PATH
    env.update(
        {
            "HOME": inner(home),
            _MARK_VAR: str(home),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "RABBITMQ_NODENAME": node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(base + _OFFSET_AMQP),
            "RABBITMQ_DIST_PORT": str(base + _OFFSET_DIST),
            "RABBITMQ_CTL_DIST_PORT_MIN": str(base + _OFFSET_CTL_MIN),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(base + _OFFSET_CTL_MAX),
            "ERL_EPMD_PORT": str(epmd_port),
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


def _rabbitmq_conf(
    home: Path,
    inner: Callable[[Path], str],
    *,
    port: int,
    tls_port: int | None,
    extra_config: Sequence[str],
) -> str:
    """The node's ``rabbitmq.conf``: its listeners (TLS with ``tls_port``), its definitions
    and ``extra_config``."""
    lines = [
        f"listeners.tcp.default = 127.0.0.1:{port}",
        "log.console = false",
        "log.file.level = info",
        f"load_definitions = {inner(home / 'definitions.json')}",
    ]
    if tls_port is not None:
        tls = home / "tls"
        lines += [
            f"listeners.ssl.default = 127.0.0.1:{tls_port}",
            f"ssl_options.cacertfile = {inner(tls / 'ca.pem')}",
            f"ssl_options.certfile = {inner(tls / 'server_cert.pem')}",
            f"ssl_options.keyfile = {inner(tls / 'server_key.pem')}",
            "ssl_options.verify = verify_peer",
            "ssl_options.fail_if_no_peer_cert = false",
            "auth_mechanisms.1 = PLAIN",
            "auth_mechanisms.2 = AMQPLAIN",
            "auth_mechanisms.3 = EXTERNAL",
            "ssl_cert_login_from = common_name",
        ]
    lines += extra_config
    return "\n".join(lines) + "\n"
