"""``python -m kiwi_anyio`` and the ``kiwi-anyio`` script (``kiwi_anyio.__main__:main``).

The command line lives in :mod:`kiwi_anyio.cli`; this shim re-exports its names (``main``,
``build_parser``, ``parse_message``, ``UsageError`` ...), so that they stay importable here.
"""

from __future__ import annotations

import sys

from .cli import *  # noqa: F403
from .cli import __all__ as __all__
from .cli import main

if __name__ == "__main__":
    sys.exit(main())
