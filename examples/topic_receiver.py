"""Receive log messages whose subject matches the given patterns (`*` is a wildcard).

Usage: python examples/topic_receiver.py <pattern>...
"""

import sys
import threading

import kiwi_anyio


def callback(_comm, body, _sender, subject, _msg_id):
    print(f" [x] {subject!r}:{body!r}", flush=True)


with kiwi_anyio.connect() as comm:
    binding_keys = sys.argv[1:]
    if not binding_keys:
        sys.stderr.write(f"Usage: {sys.argv[0]} [binding_key]...\n")
        sys.exit(1)

    for binding_key in binding_keys:
        comm.add_broadcast_subscriber(kiwi_anyio.BroadcastFilter(callback, binding_key))

    print(" [*] Waiting for logs. To exit press CTRL+C", flush=True)
    threading.Event().wait()
