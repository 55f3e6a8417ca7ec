"""Objects of the node protocol that node code returns to the executor."""


class ExecutionBlocker:
    """Returned from a node to block everything downstream. With a message, the first blocked
    consumer reports an error (type ExecutionBlocked); with None it blocks silently."""

    def __init__(self, message):
        self.message = message
