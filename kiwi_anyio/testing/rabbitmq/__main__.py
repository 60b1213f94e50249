"""``python -m kiwi_anyio.testing.rabbitmq``: runs :func:`~kiwi_anyio.testing.rabbitmq.cli.main`."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
