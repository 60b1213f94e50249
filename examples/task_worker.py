"""A worker for 'task_queue' taking one task at a time (prefetch_count=1)."""

import threading
import time

import kiwi_anyio


def callback(_comm, body):
    print(f" [x] Received {body!r}", flush=True)
    time.sleep(body.count(".") * 0.1)
    print(" [x] Done", flush=True)
    return True


with kiwi_anyio.connect() as comm:
    queue = comm.task_queue("task_queue", prefetch_count=1)
    queue.add_task_subscriber(callback)

    print(" [*] Waiting for messages. To exit press CTRL+C", flush=True)
    threading.Event().wait()  # wait for incoming messages
