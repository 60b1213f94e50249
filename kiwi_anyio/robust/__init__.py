"""The only code that knows links drop.

- :mod:`.backoff`: the pauses between reconnection attempts (pure, time passed in).
- :mod:`.link`: the supervised connection: its state, reconnecting across hosts, listeners,
  the shared channels, and the topology declared on the current connection.
- :mod:`.consumer`: consumers that come back after a reconnection (or a broker-side cancel),
  with their handler pools.
- :mod:`.publisher`: confirmed publishing, sent again after a lost link or a nack.
- :mod:`.settling`: the bookkeeping that bounds the replies and acks still in progress when a
  consumer stops or the communicator closes.

Nothing here knows kiwiPy's patterns (tasks, RPC, broadcasts): they are in
:mod:`kiwi_anyio.patterns`.
"""
