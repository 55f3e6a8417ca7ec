from executor.graph_utils import ExecutionBlocker, GraphBuilder, Node, add_graph_prefix, is_link  # noqa: F401
