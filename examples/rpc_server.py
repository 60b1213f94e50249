"""An RPC server computing Fibonacci numbers under the identifier 'rpc_queue'."""

import threading

import kiwi_anyio


def fib(n):
    if n == 0:
        return 0
    elif n == 1:
        return 1
    else:
        return fib(n - 1) + fib(n - 2)


def on_request(_comm, body):
    n = int(body)

    print(f" [.] fib({n})", flush=True)
    return fib(n)


with kiwi_anyio.connect() as comm:
    comm.add_rpc_subscriber(on_request, identifier="rpc_queue")
    print(" [x] Awaiting RPC requests", flush=True)
    threading.Event().wait()
