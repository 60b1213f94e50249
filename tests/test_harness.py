"""The test broker itself: AMQP, rabbitmqctl and TLS answer as the rest of the suite expects.

Also the RabbitMQ 4 broker run from a chroot tree: start, ctl, TLS, kill, attach, restart and
stop leave no process and no mount behind, and the tree builder reuses a complete tree and
rebuilds a half-made one.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import kiwi_anyio.testing.rabbitmq.tree as rabbitmq_tree
from kiwi_anyio.testing.rabbitmq import (
    RABBITMQ_4_3_DEFAULTS,
    BrokerError,
    BrokerInfo,
    RabbitMQBroker,
    amqp_probe,
    ensure_rabbitmq4_root,
)
from kiwi_anyio.testing.rabbitmq._processes import _marked_pids

pytestmark = pytest.mark.broker


def _connection_start(sock: socket.socket) -> bytes:
    """Send the AMQP 0-9-1 header and return the first frame the broker answers with."""
    sock.sendall(b"AMQP\x00\x00\x09\x01")
    data = b""
    while len(data) < 7 or len(data) < 7 + int.from_bytes(data[3:7], "big") + 1:
        chunk = sock.recv(65536)
        assert chunk, f"the broker closed the connection after {data!r}"
        data += chunk
    size = int.from_bytes(data[3:7], "big")
    return data[: 7 + size + 1]


def test_amqp_port_answers_protocol_header(rabbitmq: BrokerInfo) -> None:
    url = urlsplit(rabbitmq.url)
    assert url.scheme == "amqp"
    assert url.hostname == "127.0.0.1"
    assert url.port is not None
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        frame = _connection_start(sock)
    assert frame[0] == 1  # a method frame
    assert int.from_bytes(frame[1:3], "big") == 0  # on channel 0
    assert frame[7:11] == b"\x00\x0a\x00\x0a"  # Connection.Start (class 10, method 10)
    assert frame[11:13] == b"\x00\x09"  # version 0-9
    assert frame[-1] == 0xCE  # frame end


def test_ctl_lists_the_test_vhost(broker: RabbitMQBroker) -> None:
    vhosts = broker.ctl("list_vhosts", "name").split()
    assert "kiwi-test" in vhosts
    assert "/" in vhosts


def test_ctl_lists_the_users(broker: RabbitMQBroker) -> None:
    users = [line.split("\t")[0] for line in broker.ctl("list_users").splitlines()]
    assert "guest" in users
    assert "kiwi-client" in users


def test_tls_handshake_verifies_with_the_ca(rabbitmq: BrokerInfo) -> None:
    assert rabbitmq.tls_url is not None, "the broker has no TLS listener"
    assert rabbitmq.ca is not None
    url = urlsplit(rabbitmq.tls_url)
    assert url.scheme == "amqps"
    assert url.hostname == "localhost"
    assert url.port is not None
    context = ssl.create_default_context(cafile=rabbitmq.ca)
    with (
        socket.create_connection(("127.0.0.1", url.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        frame = _connection_start(sock)
    assert frame[0] == 1
    # The TLS listener offers EXTERNAL (rabbitmq_auth_mechanism_ssl is loaded).
    assert b"EXTERNAL" in frame


def test_tls_handshake_with_client_certificate(rabbitmq: BrokerInfo) -> None:
    assert rabbitmq.tls_url is not None, "the broker has no TLS listener"
    assert rabbitmq.ca is not None
    assert rabbitmq.client_cert is not None
    assert rabbitmq.client_key is not None
    port = urlsplit(rabbitmq.tls_url).port
    assert port is not None
    context = ssl.create_default_context(cafile=rabbitmq.ca)
    context.load_cert_chain(rabbitmq.client_cert, rabbitmq.client_key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        frame = _connection_start(sock)
    assert frame[0] == 1


def test_tls_refuses_an_unknown_ca(rabbitmq: BrokerInfo) -> None:
    assert rabbitmq.tls_url is not None, "the broker has no TLS listener"
    port = urlsplit(rabbitmq.tls_url).port
    assert port is not None
    context = ssl.create_default_context()  # the system CAs do not know the test CA
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(raw, server_hostname="localhost")


# -- the RabbitMQ 4 broker in a chroot tree ---------------------------------------------------


def _mount_namespace(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _pids_in_mount_namespace(namespace: str) -> list[int]:
    return [
        int(entry)
        for entry in os.listdir("/proc")
        if entry.isdigit() and _mount_namespace(entry) == namespace
    ]


def _mounts_below(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if (line.split()[4] + "/").startswith(prefix)]


def test_rabbitmq4_broker_leaves_no_process_and_no_mount(rabbitmq4_root: Path) -> None:
    broker = RabbitMQBroker.rabbitmq4(rabbitmq4_root)
    broker.start()
    try:
        home = broker.home
        assert home.parent == rabbitmq4_root / "tmp"
        assert broker.root == rabbitmq4_root
        assert broker.ctl("version").strip().startswith("4.")
        assert broker.server_version is not None and broker.server_version.startswith("4.")
        assert "kiwi-test" in broker.ctl("list_vhosts", "name").split()
        assert amqp_probe("127.0.0.1", broker.port)
        # TLS with the certificates made in the tree (the broker reads them by inner paths)
        context = ssl.create_default_context(cafile=str(broker.ca_pem_path))
        context.load_cert_chain(broker.client_cert_pem_path, broker.client_key_pem_path)
        with (
            socket.create_connection(("127.0.0.1", broker.tls_port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as sock,
        ):
            assert b"EXTERNAL" in _connection_start(sock)
        # The node sees its own /proc in a mount namespace of its own; this one sees no mount.
        beam = broker._beam_pid()
        assert beam is not None
        namespace = _mount_namespace(beam)
        assert namespace is not None and namespace != _mount_namespace("self")
        with open(f"/proc/{beam}/mountinfo") as f:
            assert any(line.split()[4] == "/proc" for line in f)
        assert os.readlink(f"/proc/{beam}/root") == str(rabbitmq4_root)
        assert _mounts_below(rabbitmq4_root) == []
        assert _marked_pids(str(home))
        info = broker.info()
        assert info.root == str(rabbitmq4_root)
        assert info.version == broker.server_version
    finally:
        broker.stop()
    assert not home.exists()
    assert _marked_pids(str(home)) == []
    # no process is left in the node's mount namespace, so its /proc mount is gone with it
    assert _pids_in_mount_namespace(namespace) == []
    assert _mounts_below(rabbitmq4_root) == []


def test_rabbitmq4_broker_kill_attach_restart(rabbitmq4_root: Path) -> None:
    broker = RabbitMQBroker.rabbitmq4(rabbitmq4_root, tls=False)
    broker.start()
    try:
        home = broker.home
        state = json.loads((home / "broker.json").read_text())
        assert state["root"] == str(rabbitmq4_root)
        assert state["extra_config"] == list(RABBITMQ_4_3_DEFAULTS)
        broker.kill()
        assert not broker._beam_alive()
        broker.start()
        assert amqp_probe("127.0.0.1", broker.port)
        attached = RabbitMQBroker.attach(home)
        assert attached.running
        assert attached.root == rabbitmq4_root
        assert attached.extra_config == RABBITMQ_4_3_DEFAULTS
        attached.restart()
        assert attached.ctl("version").strip().startswith("4.")
        assert "kiwi-test" in broker.ctl("list_vhosts", "name").split()
        attached.stop()  # stops the node, leaves the directory to its owner
        assert home.exists()
        assert not broker._beam_alive()
    finally:
        broker.stop()
    assert not home.exists()
    assert _marked_pids(str(home)) == []


def test_command_starts_both_brokers(rabbitmq4_root: Path) -> None:
    launcher = [sys.executable, "-m", "kiwi_anyio.testing.rabbitmq", "--no-tls"]
    show = (
        "import json, os; print(json.dumps({k: v for k, v in os.environ.items() if 'TEST' in k}))"
    )
    proc = subprocess.run(
        [*launcher, "--also-rabbitmq4", str(rabbitmq4_root), "--", sys.executable, "-c", show],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    env = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
    assert env["KIWI_ANYIO_TEST_BROKER_VERSION"].startswith("3.")
    assert "KIWI_ANYIO_TEST_BROKER_ROOT" not in env
    assert env["KIWI_ANYIO_TEST4_BROKER_VERSION"].startswith("4.")
    assert env["KIWI_ANYIO_TEST4_BROKER_ROOT"] == str(rabbitmq4_root)
    assert env["KIWI_ANYIO_TEST4_URL"] != env["KIWI_ANYIO_TEST_URL"]
    assert "(RabbitMQ 4." in proc.stdout
    for key in ("KIWI_ANYIO_TEST_BROKER_HOME", "KIWI_ANYIO_TEST4_BROKER_HOME"):
        assert not Path(env[key]).exists()
        assert _marked_pids(env[key]) == []


def test_rabbitmq4_root_is_reused(rabbitmq4_root: Path) -> None:
    t0 = time.monotonic()
    assert ensure_rabbitmq4_root(rabbitmq4_root) == rabbitmq4_root
    assert time.monotonic() - t0 < 1.0
    stamp = json.loads((rabbitmq4_root / ".kiwi-anyio-root.json").read_text())
    assert stamp["suite"] == "trixie"
    assert stamp["rabbitmq"].startswith("4.")


def test_rabbitmq4_root_builder_rebuilds_what_is_not_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[Path] = []

    def fake_build(dest: Path, mirror: str | None, say: Callable[[str], None]) -> dict[str, Any]:
        assert dest.name == ".tree.building" and not any(dest.iterdir())
        built.append(dest)
        (dest / "usr/lib/rabbitmq/bin").mkdir(parents=True)
        (dest / "usr/lib/rabbitmq/bin/rabbitmq-server").write_text("")
        (dest / "usr/lib/rabbitmq/lib/rabbitmq_server-4.0.5").mkdir(parents=True)
        return {"recipe": rabbitmq_tree._ROOT_RECIPE, "rabbitmq": "4.0.5"}

    monkeypatch.setattr(rabbitmq_tree, "_build_root", fake_build)
    tree = tmp_path / "tree"
    lines: list[str] = []
    assert ensure_rabbitmq4_root(tree, mirror="", log=lines.append) == tree
    assert len(built) == 1 and (tree / ".kiwi-anyio-root.json").exists()
    assert not (tmp_path / ".tree.building").exists()
    ensure_rabbitmq4_root(tree, log=lines.append)  # complete: reused
    assert len(built) == 1
    # an interrupted build leaves .tree.building: removed, and the build starts again
    shutil.rmtree(tree)
    (tmp_path / ".tree.building/usr").mkdir(parents=True)
    ensure_rabbitmq4_root(tree, mirror="", log=lines.append)
    assert len(built) == 2 and (tree / "usr/lib/rabbitmq/bin/rabbitmq-server").exists()
    assert any("half-made" in line for line in lines)
    # a tree of another recipe is rebuilt
    (tree / ".kiwi-anyio-root.json").write_text(json.dumps({"recipe": 0}))
    ensure_rabbitmq4_root(tree, mirror="", log=lines.append)
    assert len(built) == 3
    # a failed build leaves nothing that could pass for a tree
    shutil.rmtree(tree)

    def failing_build(dest: Path, mirror: str | None, say: Callable[[str], None]) -> dict[str, Any]:
        (dest / "etc").mkdir()
        raise BrokerError("debootstrap failed")

    monkeypatch.setattr(rabbitmq_tree, "_build_root", failing_build)
    with pytest.raises(BrokerError, match="debootstrap failed"):
        ensure_rabbitmq4_root(tree, mirror="", log=lines.append)
    assert not tree.exists() and not (tmp_path / ".tree.building").exists()
    # a directory that is not ours is never removed
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep").write_text("")
    with pytest.raises(BrokerError, match="not a tree made by"):
        ensure_rabbitmq4_root(other, mirror="", log=lines.append)
    assert (other / "keep").exists()
