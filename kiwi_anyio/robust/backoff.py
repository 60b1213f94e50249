"""The pauses between reconnection attempts: a pure unit, time passed in.

Owns nothing but its counters; it never sleeps or reads a clock itself.
"""

from __future__ import annotations

import random
from typing import Final

__all__ = ["STABLE_LINK", "ReconnectBackoff"]

STABLE_LINK: Final = 1.0  # seconds a link must stay up before the reconnect backoff resets


class ReconnectBackoff:
    """The pauses between reconnection attempts.

    The first attempt after a loss comes at once (a blip, a dropped proxy: the broker is
    most likely still there), within a 50 ms jitter; then 0.25 s, 0.5 s, 1 s ... up to
    ``max_delay``, each jittered down by up to half so that many clients do not come back
    in step. Attempts count on across links that drop within ``STABLE_LINK`` seconds of
    coming up, so a connection the broker keeps closing at once is retried with backoff.
    """

    def __init__(self, max_delay: float) -> None:
        self.max_delay = max_delay
        self.attempts = 0
        self._up_since: float | None = None

    def connected(self, now: float) -> None:
        """The link is up."""
        self._up_since = now

    def lost(self, now: float) -> None:
        """The link dropped: a link that was stable starts the backoff afresh."""
        if self._up_since is not None and now - self._up_since >= STABLE_LINK:
            self.attempts = 0
        self._up_since = None

    def next_delay(self) -> float:
        """The pause before the next attempt."""
        self.attempts += 1
        if self.attempts == 1:
            return min(self.max_delay, 0.05) * random.random()
        delay = min(self.max_delay, 0.25 * 2.0 ** min(self.attempts - 2, 10))
        return delay * random.uniform(0.5, 1.0)
