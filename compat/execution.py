"""ComfyUI's `execution` module, as far as packs use it: validating a prompt before queueing
it themselves (through PromptServer.instance.prompt_queue.put)."""
from executor.graph_utils import ExecutionBlocker  # noqa: F401
from executor.validation import validate_prompt  # noqa: F401
from models.progress import InterruptProcessingException  # noqa: F401
from server.routes.prompt import SENSITIVE_KEYS as SENSITIVE_EXTRA_DATA_KEYS  # noqa: F401
