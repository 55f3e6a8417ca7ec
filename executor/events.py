"""How the executor talks to the outside world: an event sink.

`executor` never imports `server`. The server's WebSocket hub implements
`EventSink`; tests use `RecordingSink`. `sid=None` means broadcast.
"""
from __future__ import annotations

import threading
from typing import Any, Protocol


class EventSink(Protocol):
    def send(self, event: str | int, data: Any, sid: str | None = None) -> None:
        """Queue an event for delivery. `event` is a message type string, or an
        int binary event type (1 preview image, 3 text, 4 preview with metadata)
        in which case `data` is the frame payload after the 4-byte type."""

    def has_client(self, sid: str) -> bool: ...


class RecordingSink:
    """Keeps every event in order; for tests and headless runs."""

    def __init__(self):
        self.events: list[tuple[str | int, Any, str | None]] = []
        self._lock = threading.Lock()

    def send(self, event, data, sid=None):
        with self._lock:
            self.events.append((event, data, sid))

    def has_client(self, sid):
        return True

    def types(self) -> list:
        return [e for e, _, _ in self.events]
