"""The package version, in a leaf module.

Owns ``__version__`` only. It imports nothing, so every module (the AMQP client in
:mod:`kiwi_anyio.protocol`, the memory broker) can read the version without importing the
package root, which imports the Communicator, which imports them: no import circle.
"""

from __future__ import annotations

__version__ = "0.1.0"
