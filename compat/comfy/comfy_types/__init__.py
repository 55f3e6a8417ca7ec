from .node_typing import IO, CheckLazyMixin, ComfyNodeABC, FileLocator, InputTypeDict  # noqa: F401
