"""What a private broker lets in: its TLS certificates and its users and virtual hosts.

The certificates (a CA, the server's, and a client certificate for EXTERNAL authentication
as :data:`CLIENT_CERT_USER`) are made with ``trustme`` when it is installed; the users
(``guest`` and :data:`CLIENT_CERT_USER`) and the virtual hosts (``/`` and
:data:`TEST_VHOST`) are the broker's ``definitions.json``.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from pathlib import Path
from typing import Any

#: The user that EXTERNAL authentication with the client certificate logs in as.
CLIENT_CERT_USER = "kiwi-client"
#: The extra virtual host every broker has.
TEST_VHOST = "kiwi-test"


def _rabbit_password_hash(password: str) -> str:
    """The hash RabbitMQ's ``rabbit_password_hashing_sha256`` stores for ``password``."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _trustme_available() -> bool:
    try:
        import trustme  # noqa: F401
    except ImportError:
        return False
    return True


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
