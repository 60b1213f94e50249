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

The package is split by what it starts:

- :mod:`.broker`: :class:`RabbitMQBroker`, one node (life cycle, ``rabbitmqctl``, attach);
- :mod:`.cluster`: :class:`RabbitMQCluster`, several nodes joined into one cluster;
- :mod:`.certificates`: the TLS certificates (``trustme``) and the users and virtual hosts;
- :mod:`.config`: a node's ``rabbitmq.conf`` and the environment of its processes;
- :mod:`.tree`: the Debian tree holding RabbitMQ 4 (:func:`ensure_rabbitmq4_root`) and
  running commands chrooted in it;
- :mod:`.info`: :class:`BrokerInfo` and the ``KIWI_ANYIO_TEST_*`` variables;
- :mod:`.errors`: :class:`BrokerError` and its kinds;
- :mod:`._processes`: pids, ports, signals and reaping (the one list of live children);
- :mod:`.cli` (run by ``__main__``): the command line, :func:`main`.

Every name is importable from this package, as it was from the single module it replaces.
"""

from __future__ import annotations

from ._processes import AMQP_PROTOCOL_HEADER as AMQP_PROTOCOL_HEADER
from ._processes import amqp_probe as amqp_probe
from .broker import RabbitMQBroker
from .certificates import CLIENT_CERT_USER as CLIENT_CERT_USER
from .certificates import TEST_VHOST as TEST_VHOST
from .cli import main
from .cluster import RabbitMQCluster
from .errors import BrokerCtlError, BrokerError, BrokerStartError
from .info import ENV4_PREFIX as ENV4_PREFIX
from .info import ENV_BROKER_HOME as ENV_BROKER_HOME
from .info import ENV_BROKER_ROOT as ENV_BROKER_ROOT
from .info import ENV_BROKER_VERSION as ENV_BROKER_VERSION
from .info import ENV_CA as ENV_CA
from .info import ENV_CLIENT_CERT as ENV_CLIENT_CERT
from .info import ENV_CLIENT_KEY as ENV_CLIENT_KEY
from .info import ENV_PREFIX as ENV_PREFIX
from .info import ENV_TLS_URL as ENV_TLS_URL
from .info import ENV_URL as ENV_URL
from .info import BrokerInfo
from .tree import DEFAULT_RABBITMQ4_ROOT, RABBITMQ_4_3_DEFAULTS, ensure_rabbitmq4_root
from .tree import RABBITMQ4_SUITE as RABBITMQ4_SUITE

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
