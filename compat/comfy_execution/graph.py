from executor.graph import (DependencyCycleError, DynamicPrompt, ExecutionList, NodeInputError,  # noqa: F401
                            NodeNotFoundError, get_input_info)
from executor.graph_utils import ExecutionBlocker  # noqa: F401
