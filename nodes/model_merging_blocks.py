"""Per-block merge nodes for the UNet families comfyd loads (ComfyUI's
comfy_extras.nodes_model_merging_model_specific: ModelMergeSD1, ModelMergeSD2, ModelMergeSDXL).

One ratio per UNet block prefix; a weight takes the ratio of the longest prefix it starts with
(ModelMergeBlocks' rule). The input names are the prefixes themselves, as in ComfyUI: SD1/SD2
with a trailing dot, SDXL without one."""
from __future__ import annotations

from nodes.model_merging import RATIO, ModelMergeBlocks

MODULE = "comfy_extras.nodes_model_merging_model_specific"


def _block_inputs(n_in: int, n_out: int, dot: str) -> dict:
    args = {"model1": ("MODEL",), "model2": ("MODEL",), "time_embed.": RATIO, "label_emb.": RATIO}
    args.update({f"input_blocks.{i}{dot}": RATIO for i in range(n_in)})
    args.update({f"middle_block.{i}{dot}": RATIO for i in range(3)})
    args.update({f"output_blocks.{i}{dot}": RATIO for i in range(n_out)})
    args["out."] = RATIO
    return {"required": args}


class ModelMergeSD1(ModelMergeBlocks):
    CATEGORY = "advanced/model_merging/model_specific"
    RELATIVE_PYTHON_MODULE = MODULE  # else inherited from ModelMergeBlocks

    @classmethod
    def INPUT_TYPES(cls):
        return _block_inputs(12, 12, ".")


class ModelMergeSDXL(ModelMergeBlocks):
    CATEGORY = "advanced/model_merging/model_specific"
    RELATIVE_PYTHON_MODULE = MODULE

    @classmethod
    def INPUT_TYPES(cls):
        return _block_inputs(9, 9, "")


NODE_CLASS_MAPPINGS = {
    "ModelMergeSD1": ModelMergeSD1,
    "ModelMergeSD2": ModelMergeSD1,  # SD1 and SD2 have the same blocks
    "ModelMergeSDXL": ModelMergeSDXL,
}
