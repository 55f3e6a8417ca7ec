"""The HTTP/WebSocket server. Custom node packs do `from server import PromptServer`;
that name resolves lazily to the compatibility object (server/prompt_server.py)."""


def __getattr__(name):
    if name in ("PromptServer", "BinaryEventTypes"):
        from server import prompt_server
        return getattr(prompt_server, name)
    raise AttributeError(name)
