"""Ask the RPC server for fib(30)."""

import kiwi_anyio

with kiwi_anyio.connect() as comm:
    print(" [x] Requesting fib(30)", flush=True)
    response = comm.rpc_send("rpc_queue", 30).result()
    print(f" [.] Got {response!r}", flush=True)
