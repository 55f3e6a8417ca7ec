"""`comfy_execution.utils`: which node is running (prompt id, node id, list index), read from
the executor's context variable; valid inside a node's function, also in async nodes."""
from __future__ import annotations

from typing import NamedTuple, Optional

from executor.node_calls import current_node


class ExecutionContext(NamedTuple):
    prompt_id: str
    node_id: str
    list_index: Optional[int]


def get_executing_context() -> Optional[ExecutionContext]:
    ctx = current_node.get()
    return None if ctx is None else ExecutionContext(*ctx)


class CurrentNodeContext:
    """Run code as if inside node `node_id` (progress reports are attributed to it)."""

    def __init__(self, prompt_id: str, node_id: str, list_index: Optional[int] = None):
        self.context = (prompt_id, node_id, list_index)
        self.token = None

    def __enter__(self):
        self.token = current_node.set(self.context)
        return self

    def __exit__(self, *exc):
        if self.token is not None:
            current_node.reset(self.token)
        return False
