"""The in-memory log ring behind /internal/logs: the last 300 writes to stdout/stderr, and
live `logs` messages to WebSocket clients that subscribed."""
from __future__ import annotations

import collections
import datetime
import shutil
import sys
import threading

_ring: collections.deque = collections.deque(maxlen=300)
_lock = threading.Lock()
_subscribers: dict = {}  # sid -> hub


def entries() -> list[dict]:
    with _lock:
        return list(_ring)


def terminal_size():
    try:
        size = shutil.get_terminal_size()
        return {"cols": size.columns, "rows": size.lines}
    except OSError:
        return None


def subscribe(hub, sid: str, enabled: bool) -> None:
    if enabled:
        _subscribers[sid] = hub
    else:
        _subscribers.pop(sid, None)


def record(text: str) -> None:
    entry = {"t": datetime.datetime.now().isoformat(), "m": text}
    with _lock:
        _ring.append(entry)
    for sid, hub in list(_subscribers.items()):
        hub.send("logs", {"entries": [entry], "size": terminal_size()}, sid)


class _Tee:
    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        if text:
            record(text)
        return self.stream.write(text)

    def flush(self):
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def capture_std_streams() -> None:
    """Mirror stdout/stderr writes into the ring (called once by the process entry point)."""
    if not isinstance(sys.stdout, _Tee):
        sys.stdout = _Tee(sys.stdout)
    if not isinstance(sys.stderr, _Tee):
        sys.stderr = _Tee(sys.stderr)
