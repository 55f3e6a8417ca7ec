"""The in-memory log ring behind /internal/logs: the last 300 writes to stdout/stderr, and
live `logs` messages to the WebSocket clients that subscribed (API.md §9, §10.3).

The process entry point installs it (`capture_std_streams`); until then the ring is empty.
Writes are sent to subscribers in batches, when a line ends or the stream is flushed."""
from __future__ import annotations

import collections
import datetime
import os
import shutil
import sys
import threading

CAPACITY = 300
DEFAULT_SIZE = (80, 24)

_ring: collections.deque = collections.deque(maxlen=CAPACITY)
_pending: list[dict] = []  # written since the last batch went out
_lock = threading.RLock()
_subscribers: dict[str, object] = {}  # sid -> hub (anything with send(event, data, sid) and has_client(sid))
_last_size: tuple[int, int] | None = None
_sending = threading.local()  # guards against a send that itself logs


def entries() -> list[dict]:
    with _lock:
        return list(_ring)


def clear() -> None:
    with _lock:
        _ring.clear()
        _pending.clear()


def terminal_size() -> dict:
    """The server's terminal size (80x24 when it has none), as the frontend's terminal wants it."""
    try:
        cols, rows = os.get_terminal_size()
    except (OSError, ValueError):
        try:
            cols, rows = shutil.get_terminal_size(DEFAULT_SIZE)
        except (OSError, ValueError):
            cols, rows = DEFAULT_SIZE
    return {"cols": cols, "rows": rows}


def _size_if_changed() -> dict | None:
    global _last_size
    size = terminal_size()
    key = (size["cols"], size["rows"])
    if key == _last_size:
        return None
    _last_size = key
    return size


def subscribe(hub, sid: str, enabled: bool) -> None:
    with _lock:
        if enabled:
            _subscribers[sid] = hub
        else:
            _subscribers.pop(sid, None)


def subscribed(sid: str) -> bool:
    return sid in _subscribers


def record(text: str) -> None:
    """One write to stdout/stderr. A write starting with a carriage return replaces the previous
    entry when that one is not a finished line (progress bars would flood the ring otherwise)."""
    entry = {"t": datetime.datetime.now().isoformat(), "m": text}
    with _lock:
        if text.startswith("\r") and _ring and not _ring[-1]["m"].endswith("\n"):
            _ring.pop()
        _ring.append(entry)
        _pending.append(entry)
    if text.endswith("\n"):
        flush()


def flush() -> None:
    """Send what was written since the last batch to every subscriber still connected."""
    if getattr(_sending, "active", False):
        return
    with _lock:
        batch = list(_pending)
        _pending.clear()
        targets = list(_subscribers.items())
    if not batch or not targets:
        return
    _sending.active = True
    try:
        size = _size_if_changed()
        for sid, hub in targets:
            has_client = getattr(hub, "has_client", None)
            if has_client is not None and not has_client(sid):
                subscribe(hub, sid, False)  # the socket went away
                continue
            hub.send("logs", {"entries": batch, "size": size}, sid)
    finally:
        _sending.active = False


class _Tee:
    """A text stream that records every write in the ring, then passes it on."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        if isinstance(text, str) and text:
            record(text)
        return self.stream.write(text)

    def flush(self):
        self.stream.flush()
        flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def capture_std_streams() -> None:
    """Mirror stdout/stderr writes into the ring (called once by the process entry point)."""
    if not isinstance(sys.stdout, _Tee):
        sys.stdout = _Tee(sys.stdout)
    if not isinstance(sys.stderr, _Tee):
        sys.stderr = _Tee(sys.stderr)


def release_std_streams() -> None:
    """Undo capture_std_streams (tests)."""
    if isinstance(sys.stdout, _Tee):
        sys.stdout = sys.stdout.stream
    if isinstance(sys.stderr, _Tee):
        sys.stderr = sys.stderr.stream
