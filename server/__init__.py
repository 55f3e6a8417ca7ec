"""The HTTP/WebSocket server. Custom node packs do `from server import PromptServer`;
that name resolves lazily to the compatibility object (server/prompt_server.py)."""


def __getattr__(name):
    if name == "PromptServer":
        from server.prompt_server import PromptServer
        return PromptServer
    raise AttributeError(name)
