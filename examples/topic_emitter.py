"""Emit a log message with a subject (RabbitMQ tutorial 5: topics).

Usage: python examples/topic_emitter.py <subject> [message...]
"""

import sys

import kiwi_anyio

message = " ".join(sys.argv[2:]) or "Hello World!"

with kiwi_anyio.connect() as comm:
    subject = sys.argv[1] if len(sys.argv) > 2 else "anonymous.info"
    comm.broadcast_send(message, subject=subject)
    print(f" [x] Sent {subject!r}:{message!r}", flush=True)
