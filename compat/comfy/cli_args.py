"""`comfy.cli_args` for custom node packs: `args` is the running server's parsed flags (the
defaults when no server was created), and the enums packs compare them with."""
from __future__ import annotations

import enum


class LatentPreviewMethod(str, enum.Enum):
    # str values, so comfyd's plain-string args.preview_method compares equal
    NoPreviews = "none"
    Auto = "auto"
    Latent2RGB = "latent2rgb"
    TAESD = "taesd"


class PerformanceFeature(str, enum.Enum):
    Fp16Accumulation = "fp16_accumulation"
    Fp8MatrixMultiplication = "fp8_matrix_mult"
    CublasOps = "cublas_ops"
    AutoTune = "autotune"


def _current_args():
    from server.prompt_server import PromptServer
    if PromptServer.instance is not None:
        from server.app_keys import ARGS
        return PromptServer.instance.app[ARGS]
    from server import cli
    return cli.parse_args([])


def __getattr__(name):
    if name == "args":
        return _current_args()
    raise AttributeError(name)
