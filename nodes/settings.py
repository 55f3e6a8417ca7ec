"""Server settings and hooks that nodes read (set once at start-up by the server, which nodes
may not import): --disable-metadata, --default-hashing-function, and a sender for the
"progress text" a node shows on itself (GetImageSize's size line)."""
from __future__ import annotations

from typing import Callable, Optional

settings = {"disable_metadata": False, "hashing_function": "sha256"}

# sender(text, node_id) -> None; installed by the server, None when no server runs (tests, CLI).
_progress_text_sender: Optional[Callable[[str, str], None]] = None


def configure(disable_metadata: bool = False, hashing_function: str = "sha256") -> None:
    settings.update(disable_metadata=disable_metadata, hashing_function=hashing_function)


def set_progress_text_sender(sender: Optional[Callable[[str, str], None]]) -> None:
    global _progress_text_sender
    _progress_text_sender = sender


def send_progress_text(text: str, node_id: str) -> None:
    """Show `text` on node `node_id` in connected clients; a no-op without a server."""
    if _progress_text_sender is not None:
        _progress_text_sender(text, node_id)
