from nodes.v3 import *  # noqa: F401,F403
from nodes.v3 import ComfyExtension, ComfyNode, Hidden, HiddenHolder, NodeOutput, Schema  # noqa: F401
from nodes.v3_types import *  # noqa: F401,F403
from nodes.v3_types import Custom, FolderType, NumberDisplay, RemoteOptions, UploadType, comfytype  # noqa: F401
