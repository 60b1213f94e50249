"""kiwiPy's ``EventHelper``: a set of listeners, each told of events; one that raises is
logged and the others still hear."""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["EventHelper"]

logger = logging.getLogger(__name__)


class EventHelper:
    """Listeners of type ``listener_type``; ``fire_event(fn, *args)`` calls
    ``fn(listener, *args)`` for each."""

    def __init__(self, listener_type: type) -> None:
        assert listener_type is not None, "Must provide valid listener type"
        self._listener_type = listener_type
        self._listeners: set[Any] = set()

    def add_listener(self, listener: Any) -> None:
        """Add a listener (it must be a ``listener_type``)."""
        assert isinstance(listener, self._listener_type), "Listener is not of right type"
        self._listeners.add(listener)

    def remove_listener(self, listener: Any) -> None:
        """Remove a listener."""
        self._listeners.discard(listener)

    def remove_all_listeners(self) -> None:
        """Remove every listener."""
        self._listeners.clear()

    @property
    def listeners(self) -> set[Any]:
        """The listeners."""
        return self._listeners

    def fire_event(self, event_function: Any, *args: Any, **kwargs: Any) -> None:
        """Call ``event_function(listener, *args, **kwargs)`` for every listener."""
        if event_function is None:
            raise ValueError("Must provide valid event method")
        for listener in list(self._listeners):
            try:
                event_function(listener, *args, **kwargs)
            except Exception:
                logger.exception("listener %r raised", listener)
