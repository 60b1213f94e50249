"""Test helpers for kiwi_anyio.

:mod:`kiwi_anyio.testing.rabbitmq` starts private, throwaway RabbitMQ brokers for test suites
(``python -m kiwi_anyio.testing.rabbitmq -- CMD ARGS...`` runs a command against one).
"""

from __future__ import annotations
