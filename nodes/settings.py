"""Server settings that nodes read (set once at start-up from the command line)."""
from __future__ import annotations

settings = {"disable_metadata": False, "hashing_function": "sha256"}


def configure(disable_metadata: bool = False, hashing_function: str = "sha256") -> None:
    settings.update(disable_metadata=disable_metadata, hashing_function=hashing_function)
