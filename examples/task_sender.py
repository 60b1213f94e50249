"""Send a task to the durable queue 'task_queue' (RabbitMQ tutorial 2, kiwiPy style).

Usage: python examples/task_sender.py [message...]   (broker URL from KIWI_ANYIO_URL)
"""

import sys

import kiwi_anyio

message = " ".join(sys.argv[1:]) or "Hello World!"

with kiwi_anyio.connect() as comm:
    queue = comm.task_queue("task_queue")  # durable by default
    queue.task_send(message, no_reply=True)
    print(f" [x] Sent {message!r}", flush=True)
