"""Architecture detection from key names and shapes: the real layouts, every family at tiny
width, and clear errors for files that are not Stable Diffusion checkpoints."""
import json
import os

import pytest
import torch

from models.detect import UnknownArchitectureError, detect_checkpoint, detect_unet_config
from models.state_dict import TensorSource
from models.unet import UNetModel
from models.vae import AutoencoderKL, vae_config_from_state_dict
from tests.tiny_checkpoints import LAYOUT_DIR, ORACLE_DIR, UNET, real_layout, tiny_checkpoint, tiny_layout

pytestmark = pytest.mark.skipif(not os.path.isdir(LAYOUT_DIR), reason="oracle layouts not available")


class ShapeSource(TensorSource):
    """Keys and shapes only (what detection needs), zeros when a value is asked for."""

    def __init__(self, layout):
        self.layout = layout

    def keys(self):
        return list(self.layout)

    def shape(self, key):
        return tuple(self.layout[key])

    def get(self, key, dtype=None, device=None):
        return torch.zeros(self.layout[key], dtype=dtype or torch.float32)


@pytest.mark.parametrize("arch, file", [("sd15", "oracle_sd15_s1.safetensors"), ("sdxl", "oracle_sdxl_s2.safetensors")])
def test_real_layouts_detected_as_comfyui_does(arch, file):
    with open(os.path.join(ORACLE_DIR, "refs", "model_detection.json")) as f:
        expected = json.load(f)[file]
    det = detect_checkpoint(ShapeSource(real_layout(arch)))
    assert det.comfy_config == expected["model_config"]
    assert det.model_type.upper() == expected["model_type"]
    assert det.full_width and det.variant == ""
    assert det.vae_prefix == "first_stage_model."


def test_sd15_and_sdxl_unet_configs_are_the_real_ones():
    sd1 = detect_checkpoint(ShapeSource(real_layout("sd15"))).unet
    assert (sd1.model_channels, sd1.channel_mult, sd1.num_res_blocks, sd1.context_dim) == (320, [1, 2, 4, 4], [2, 2, 2, 2], 768)
    assert sd1.transformer_depth == [1, 1, 1, 1, 1, 1, 0, 0] and sd1.transformer_depth_middle == 1
    assert sd1.transformer_depth_output == [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    assert not sd1.use_linear_in_transformer and sd1.adm_in_channels is None and sd1.num_heads == 8
    xl = detect_checkpoint(ShapeSource(real_layout("sdxl"))).unet
    assert (xl.model_channels, xl.channel_mult, xl.context_dim, xl.adm_in_channels) == (320, [1, 2, 4], 2048, 2816)
    assert xl.transformer_depth == [0, 0, 2, 2, 10, 10] and xl.transformer_depth_middle == 10
    assert xl.transformer_depth_output == [0, 0, 0, 2, 2, 2, 10, 10, 10]
    assert xl.use_linear_in_transformer and xl.num_head_channels == 64 and xl.heads_for(1280) == (20, 64)


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_network_attribute_names_are_the_checkpoint_keys(arch):
    """Built at the detected config, the UNet and VAE have exactly the file's keys and shapes,
    so loading is a plain walk of the state dict."""
    layout = real_layout(arch)
    det = detect_checkpoint(ShapeSource(layout))
    with torch.device("meta"):
        unet = UNetModel(det.unet)
        vae = AutoencoderKL(vae_config_from_state_dict(ShapeSource(layout), "first_stage_model."))
    want_unet = {k[len(UNET):]: v for k, v in layout.items() if k.startswith(UNET)}
    assert {k: tuple(v.shape) for k, v in unet.state_dict().items()} == want_unet
    want_vae = {k[len("first_stage_model."):]: v for k, v in layout.items() if k.startswith("first_stage_model.")}
    assert {k: tuple(v.shape) for k, v in vae.state_dict().items()} == want_vae


EXPECTED = {  # family, variant, prediction, text encoders, latent format
    "sd1": ("sd1", "", "eps", {"clip_l"}, "SD15"),
    "sd1_inpaint": ("sd1", "inpaint", "eps", {"clip_l"}, "SD15"),
    "sd2": ("sd2", "", "eps", {"clip_h"}, "SD15"),
    "sd2_v": ("sd2", "", "v_prediction", {"clip_h"}, "SD15"),
    "sd2_inpaint": ("sd2", "inpaint", "eps", {"clip_h"}, "SD15"),
    "sdxl": ("sdxl", "", "eps", {"clip_l", "clip_g"}, "SDXL"),
    "sdxl_inpaint": ("sdxl", "inpaint", "eps", {"clip_l", "clip_g"}, "SDXL"),
    "sdxl_refiner": ("sdxl_refiner", "", "eps", {"clip_g"}, "SDXL"),
    "ssd1b": ("ssd1b", "", "eps", {"clip_l", "clip_g"}, "SDXL"),
    "segmind_vega": ("segmind_vega", "", "eps", {"clip_l", "clip_g"}, "SDXL"),
}


@pytest.mark.parametrize("tiny", sorted(EXPECTED))
def test_every_family_detected_at_tiny_width(tiny):
    det = detect_checkpoint(tiny_checkpoint(tiny))
    family, variant, prediction, encoders, latent = EXPECTED[tiny]
    assert (det.family, det.variant, det.model_type, set(det.text_encoders), det.latent_format) == \
        (family, variant, prediction, encoders, latent)
    assert not det.full_width
    assert det.unet.model_channels == 32


def test_reduced_depth_sdxl_variants_keep_their_depth_lists():
    ssd = detect_unet_config(ShapeSource(tiny_layout("ssd1b")))
    assert ssd.transformer_depth == [0, 0, 2, 2, 4, 4] and ssd.transformer_depth_middle == -1
    assert ssd.transformer_depth_output == [0, 0, 0, 1, 1, 2, 10, 4, 4]
    vega = detect_unet_config(ShapeSource(tiny_layout("segmind_vega")))
    assert vega.transformer_depth == [0, 0, 1, 1, 2, 2] and vega.transformer_depth_output == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    ref = detect_unet_config(ShapeSource(tiny_layout("sdxl_refiner")))
    assert ref.channel_mult == [1, 2, 4, 4] and ref.transformer_depth == [0, 0, 4, 4, 4, 4, 0, 0]


def test_sdxl_v_prediction_key_selects_v_prediction():
    sd = tiny_checkpoint("sdxl")
    sd["v_pred"] = torch.tensor([])
    assert detect_checkpoint(sd).model_type == "v_prediction"
    sd["ztsnr"] = torch.tensor([])
    assert detect_checkpoint(sd).zsnr


@pytest.mark.parametrize("layout, what", [("sd15_lora", "LoRA"), ("sd15_controlnet", "ControlNet"),
                                          ("sdxl_control_lora", "Control-LoRA"), ("clip_vision_g", "CLIP vision")])
def test_other_model_files_get_an_error_naming_what_was_found(layout, what):
    with pytest.raises(UnknownArchitectureError) as e:
        detect_checkpoint(ShapeSource(real_layout(layout)))
    assert "no Stable Diffusion UNet" in str(e.value) and what in str(e.value)


def test_vae_only_file_is_named():
    vae = {k[len("first_stage_model."):]: v for k, v in real_layout("sd15").items() if k.startswith("first_stage_model.")}
    with pytest.raises(UnknownArchitectureError, match="looks like a VAE"):
        detect_checkpoint(ShapeSource(vae))


def test_unknown_unet_structure_is_described():
    layout = dict(tiny_layout("sd1"))
    layout = {k: v for k, v in layout.items() if ".input_blocks.1.1." not in k}  # one transformer fewer
    with pytest.raises(UnknownArchitectureError) as e:
        detect_checkpoint(ShapeSource(layout))
    msg = str(e.value)
    assert "unknown UNet architecture" in msg and "transformer_depth [0, 1, 1, 1, 1, 1, 0, 0]" in msg
    assert "SDXL" in msg  # lists what is supported


def test_full_width_file_must_have_the_familys_widths():
    layout = dict(real_layout("sd15"))
    for k, v in list(layout.items()):
        if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight")):
            layout[k] = (v[0], 1024)
    with pytest.raises(UnknownArchitectureError, match="context_dim 1024 where SD1.x has 768"):
        detect_checkpoint(ShapeSource(layout))


def test_empty_state_dict():
    with pytest.raises(UnknownArchitectureError, match="no tensors"):
        detect_checkpoint({})
