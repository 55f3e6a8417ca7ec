"""LoRA/LyCORIS adapters: key dialects, weight math, in-place patching and restoring."""
import torch

from models.lora.adapters import Adapter
from models.lora.keymap import clip_key_map, diffusers_to_ldm, unet_key_map
from models.lora.load import lora_patches
from models.lora.patcher import WeightPatcher

SD15_STRUCTURE = dict(num_res_blocks=[2, 2, 2, 2], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                      transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1)


def g(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_lora_math_with_alpha_and_strength():
    up, down = g(6, 2, seed=1), g(2, 5, seed=2)
    a = Adapter("lora", {"up": up, "down": down}, alpha=1.0)
    w = g(6, 5, seed=3)
    out = a.apply(w, 0.8)
    torch.testing.assert_close(out, w + 0.8 * (1.0 / 2) * (up @ down))
    no_alpha = Adapter("lora", {"up": up, "down": down}).apply(w, 1.0)
    torch.testing.assert_close(no_alpha, w + up @ down)


def test_conv_lora_and_locon_mid():
    up, down = g(8, 4, 1, 1, seed=1), g(4, 3, 3, 3, seed=2)
    w = g(8, 3, 3, 3, seed=3)
    out = Adapter("lora", {"up": up, "down": down}, alpha=4.0).apply(w, 1.0)
    torch.testing.assert_close(out, w + (up.flatten(1) @ down.flatten(1)).reshape(w.shape))
    # Tucker: down is 1x1, the spatial part lives in mid
    up, down, mid = g(8, 4, 1, 1, seed=4), g(4, 3, 1, 1, seed=5), g(4, 4, 3, 3, seed=6)
    diff = Adapter("lora", {"up": up, "down": down, "mid": mid}, alpha=4.0).difference(w.shape, "cpu")
    expect = torch.einsum("m n h w, i m, n j -> i j h w", mid, up.flatten(1), down.flatten(1))
    torch.testing.assert_close(diff, expect, rtol=1e-5, atol=1e-5)


def test_loha_and_lokr():
    w = g(6, 4, seed=9)
    w1a, w1b, w2a, w2b = g(6, 2, seed=1), g(2, 4, seed=2), g(6, 2, seed=3), g(2, 4, seed=4)
    loha = Adapter("loha", {"w1a": w1a, "w1b": w1b, "w2a": w2a, "w2b": w2b}, alpha=1.0)
    torch.testing.assert_close(loha.apply(w, 1.0), w + (w1a @ w1b) * (w2a @ w2b) * 0.5)
    k1, k2 = g(2, 2, seed=5), g(3, 2, seed=6)
    lokr = Adapter("lokr", {"w1": k1, "w2": k2})
    torch.testing.assert_close(lokr.apply(w, 0.5), w + 0.5 * torch.kron(k1, k2))


def test_dora_renormalises_columns():
    up, down = g(6, 2, seed=1), g(2, 5, seed=2)
    w = g(6, 5, seed=3)
    scale = torch.full((1, 5), 2.0)
    out = Adapter("lora", {"up": up, "down": down}, alpha=2.0, dora_scale=scale).apply(w, 1.0)
    torch.testing.assert_close(out.norm(dim=0), torch.full((5,), 2.0), rtol=1e-5, atol=1e-5)


def test_diffusers_map_matches_ldm_layout():
    m = diffusers_to_ldm(**SD15_STRUCTURE)
    assert m["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"] == \
        "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"
    assert m["down_blocks.0.downsamplers.0.conv.weight"] == "input_blocks.3.0.op.weight"
    assert m["up_blocks.1.attentions.2.proj_out.weight"] == "output_blocks.5.1.proj_out.weight"
    assert m["up_blocks.1.upsamplers.0.conv.weight"] == "output_blocks.5.2.conv.weight"
    assert m["up_blocks.0.upsamplers.0.conv.weight"] == "output_blocks.2.1.conv.weight"
    assert m["mid_block.resnets.1.conv2.weight"] == "middle_block.2.out_layers.3.weight"


def test_all_dialects_reach_the_same_weight():
    ldm = "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"
    km = unet_key_map([ldm, "input_blocks.4.1.proj_in.bias"], SD15_STRUCTURE)
    target = ("unet", ldm)
    for name in ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                 "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
                 "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q",
                 "down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q",
                 "lycoris_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
                 "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q"):
        assert km[name] == target, name


def test_clip_dialects_sdxl():
    k = "text_model.encoder.layers.3.self_attn.q_proj.weight"
    km = clip_key_map({"clip_l": [k], "clip_g": [k]})
    assert km["lora_te1_text_model_encoder_layers_3_self_attn_q_proj"] == ("clip_l", k)
    assert km["lora_te2_text_model_encoder_layers_3_self_attn_q_proj"] == ("clip_g", k)
    assert km["text_encoder_2.text_model.encoder.layers.3.self_attn.q_proj"] == ("clip_g", k)
    sd1 = clip_key_map({"clip_l": [k]})
    assert sd1["lora_te_text_model_encoder_layers_3_self_attn_q_proj"] == ("clip_l", k)


def test_file_to_patches_reports_unused_keys(caplog):
    km = {"lora_unet_x": ("unet", "x.weight")}
    f = {"lora_unet_x.lora_up.weight": g(3, 1), "lora_unet_x.lora_down.weight": g(1, 3),
         "lora_unet_x.alpha": torch.tensor(1.0), "lora_unet_unknown.lora_up.weight": g(3, 1)}
    p = lora_patches(f, km)
    assert set(p) == {("unet", "x.weight")} and p[("unet", "x.weight")].kind == "lora"
    assert "lora key not loaded: lora_unet_unknown.lora_up.weight" in caplog.text


def test_patcher_switches_and_restores_without_reload():
    lin = torch.nn.Linear(5, 6)
    original = lin.weight.detach().clone()
    wp = WeightPatcher({"unet": torch.nn.ModuleDict({"layer": lin})})
    a = {("unet", "layer.weight"): Adapter("lora", {"up": g(6, 1, seed=1), "down": g(1, 5, seed=2)})}
    b = {("unet", "layer.weight"): Adapter("lora", {"up": g(6, 1, seed=3), "down": g(1, 5, seed=4)})}
    wp.apply([(a, 1.0)])
    after_a = lin.weight.detach().clone()
    assert not torch.equal(after_a, original)
    wp.apply([(a, 1.0), (b, 0.5)])  # stacked
    torch.testing.assert_close(lin.weight, after_a + 0.5 * (b[("unet", "layer.weight")].tensors["up"] @
                                                             b[("unet", "layer.weight")].tensors["down"]))
    wp.apply([(b, 1.0)])  # switch: a removed
    torch.testing.assert_close(lin.weight, original + b[("unet", "layer.weight")].difference((6, 5), "cpu"))
    wp.apply([])
    assert torch.equal(lin.weight, original)
