"""LoRA over HTTP on tiny checkpoints: switching LoRAs between prompts never reloads the checkpoint,
and LyCORIS files (LoCon with a Tucker core on a conv, LoHa, LoKr, DoRA, bias diffs, a text-encoder
LoKr) patch exactly the weights their formulas give — read back through ModelSave/CLIPSave, which
write the patched weights. Expected values are computed here from the factors."""
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from models import folders
from tests.tiny_checkpoints import LAYOUT_DIR, write_tiny_checkpoint
from wsclient import run_prompt

pytestmark = pytest.mark.skipif(not os.path.isdir(LAYOUT_DIR), reason="oracle layouts not available")

UNET = "model.diffusion_model."
TE = "cond_stage_model.transformer."


@pytest.fixture
def models_dir(base_dir):
    m = base_dir / "models"
    write_tiny_checkpoint(str(m / "checkpoints" / "a.safetensors"), "sd1", seed=3)
    (m / "loras").mkdir()
    folders._list_cache.clear()
    return m


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.1


def kohya_lora(sd, seed):
    """A plain rank-2 kohya LoRA on two UNet projections and one text-encoder projection."""
    out = {}
    for i, (name, key) in enumerate((("lora_unet_input_blocks_1_1_proj_in", UNET + "input_blocks.1.1.proj_in.weight"),
                                     ("lora_unet_output_blocks_3_1_transformer_blocks_0_attn2_to_k",
                                      UNET + "output_blocks.3.1.transformer_blocks.0.attn2.to_k.weight"),
                                     ("lora_te_text_model_encoder_layers_0_self_attn_q_proj",
                                      TE + "text_model.encoder.layers.0.self_attn.q_proj.weight"))):
        w = sd[key]
        conv = (1, 1) if w.dim() == 4 else ()
        out[name + ".lora_up.weight"] = rand(w.shape[0], 2, *conv, seed=seed + i).half()
        out[name + ".lora_down.weight"] = rand(2, *w.shape[1:], seed=seed + 10 + i).half()
        out[name + ".alpha"] = torch.tensor(2.0)
    return out


def txt2img(lora=None):
    model, clip = (["2", 0], ["2", 1]) if lora else (["1", 0], ["1", 1])
    p = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
         "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red cat", "clip": clip}},
         "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": clip}},
         "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
         "6": {"class_type": "KSampler", "inputs": {"model": model, "positive": ["3", 0], "negative": ["4", 0],
                                                   "latent_image": ["5", 0], "seed": 2, "steps": 2, "cfg": 7.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
         "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "l"}}}
    if lora:
        p["2"] = {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": lora,
                                                        "strength_model": 1.0, "strength_clip": 1.0}}
    return p


async def run_ok(client, prompt):
    resp, events, history = await run_prompt(client, prompt, timeout=120)
    assert "prompt_id" in resp, resp
    assert history["status"]["status_str"] == "success", [d for t, d in events if t == "execution_error"]
    return history


async def latent(client, base_dir, prompt):
    h = await run_ok(client, prompt)
    return load_file(str(base_dir / "output" / h["outputs"]["7"]["latents"][0]["filename"]))["latent_tensor"]


async def test_switching_loras_between_prompts_never_reloads_the_checkpoint(client, models_dir, base_dir,
                                                                             monkeypatch):
    import nodes.checkpoint_loaders
    sd = load_file(str(models_dir / "checkpoints" / "a.safetensors"))
    save_file(kohya_lora(sd, 1), str(models_dir / "loras" / "A.safetensors"))
    save_file(kohya_lora(sd, 50), str(models_dir / "loras" / "B.safetensors"))
    folders._list_cache.clear()
    loads = []
    real = nodes.checkpoint_loaders.load_checkpoint

    def counting(*a, **kw):
        loads.append(a[0] if a else kw.get("source"))
        return real(*a, **kw)
    monkeypatch.setattr(nodes.checkpoint_loaders, "load_checkpoint", counting)

    base = await latent(client, base_dir, txt2img())
    lat_a = await latent(client, base_dir, txt2img("A.safetensors"))
    lat_b = await latent(client, base_dir, txt2img("B.safetensors"))
    lat_a2 = await latent(client, base_dir, txt2img("A.safetensors"))  # the same LoRA again
    again = await latent(client, base_dir, txt2img())
    assert len(loads) == 1, loads
    assert not torch.equal(base, lat_a) and not torch.equal(lat_a, lat_b)
    assert torch.equal(lat_a, lat_a2) and torch.equal(base, again)  # exact restore between prompts


def lycoris_file(sd):
    """LyCORIS adapters of several kinds on the tiny SD1 model; returns (file tensors, expected
    fp32 weights by checkpoint key)."""
    f, expect = {}, {}
    # LoCon with a Tucker core on a 3x3 conv: diff[o,i,h,w] = sum up[o,a] mid[a,b,h,w] down[b,i]
    k = UNET + "input_blocks.1.0.in_layers.2.weight"
    w = sd[k].float()
    up, down, mid = rand(w.shape[0], 4, 1, 1, seed=1), rand(4, w.shape[1], 1, 1, seed=2), rand(4, 4, 3, 3, seed=3)
    n = "lora_unet_input_blocks_1_0_in_layers_2"
    f.update({n + ".lora_up.weight": up, n + ".lora_down.weight": down, n + ".lora_mid.weight": mid,
              n + ".alpha": torch.tensor(2.0)})
    expect[k] = w + torch.einsum("o a, a b h w, b i -> o i h w", up.flatten(1), mid, down.flatten(1)) * (2.0 / 4)
    # LoHa on a linear: (w1a w1b) * (w2a w2b) * alpha / rank
    k = UNET + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    w = sd[k].float()
    w1a, w1b, w2a, w2b = rand(w.shape[0], 3, seed=4), rand(3, w.shape[1], seed=5), rand(w.shape[0], 3, seed=6), \
        rand(3, w.shape[1], seed=7)
    n = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
    f.update({n + ".hada_w1_a": w1a, n + ".hada_w1_b": w1b, n + ".hada_w2_a": w2a, n + ".hada_w2_b": w2b,
              n + ".alpha": torch.tensor(1.5)})
    expect[k] = w + (w1a @ w1b) * (w2a @ w2b) * (1.5 / 3)
    # LoKr: kron(w1, w2a w2b) * alpha / rank of the low-rank factor
    k = UNET + "input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight"
    w = sd[k].float()
    k1 = rand(4, 2, seed=8)
    l2a, l2b = rand(w.shape[0] // 4, 2, seed=9), rand(2, w.shape[1] // 2, seed=10)
    n = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_k"
    f.update({n + ".lokr_w1": k1, n + ".lokr_w2_a": l2a, n + ".lokr_w2_b": l2b, n + ".alpha": torch.tensor(1.0)})
    expect[k] = w + torch.kron(k1, l2a @ l2b) * (1.0 / 2)
    # DoRA (column-wise magnitude [1, in]): columns of w + diff rescaled to dora_scale
    k = UNET + "input_blocks.1.1.transformer_blocks.0.attn1.to_v.weight"
    w = sd[k].float()
    up, down = rand(w.shape[0], 2, seed=11), rand(2, w.shape[1], seed=12)
    scale = rand(1, w.shape[1], seed=13).abs() + 0.5
    n = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_v"
    f.update({n + ".lora_up.weight": up, n + ".lora_down.weight": down, n + ".alpha": torch.tensor(2.0),
              n + ".dora_scale": scale})
    calc = w + up @ down
    expect[k] = calc * (scale / (calc.norm(dim=0, keepdim=True) + torch.finfo(torch.float32).eps))
    # a bias difference and a full weight difference
    k = UNET + "input_blocks.1.1.proj_in.bias"
    d = rand(*sd[k].shape, seed=14)
    f["lora_unet_input_blocks_1_1_proj_in.diff_b"] = d
    expect[k] = sd[k].float() + d
    k = UNET + "out.2.weight"
    d = rand(*sd[k].shape, seed=15)
    f["lora_unet_out_2.diff"] = d
    expect[k] = sd[k].float() + d
    # a text-encoder LoKr with both factors full
    k = TE + "text_model.encoder.layers.1.mlp.fc1.weight"
    w = sd[k].float()
    k1, k2 = rand(2, 2, seed=16), rand(w.shape[0] // 2, w.shape[1] // 2, seed=17)
    n = "lora_te_text_model_encoder_layers_1_mlp_fc1"
    f.update({n + ".lokr_w1": k1, n + ".lokr_w2": k2})
    expect[k] = w + torch.kron(k1, k2)
    return f, expect


async def test_lycoris_formats_patch_the_weights_their_formulas_give(client, models_dir, base_dir):
    sd = load_file(str(models_dir / "checkpoints" / "a.safetensors"))
    tensors, expect = lycoris_file(sd)
    save_file(tensors, str(models_dir / "loras" / "lyco.safetensors"))
    folders._list_cache.clear()
    base = await latent(client, base_dir, txt2img())
    p = txt2img("lyco.safetensors")
    p["8"] = {"class_type": "ModelSave", "inputs": {"model": ["2", 0], "filename_prefix": "lyco_unet"}}
    p["9"] = {"class_type": "CLIPSave", "inputs": {"clip": ["2", 1], "filename_prefix": "lyco_te"}}
    lat = await latent(client, base_dir, p)
    assert not torch.equal(base, lat)
    unet = load_file(str(base_dir / "output" / "lyco_unet_00001_.safetensors"))
    te = {TE + k: v for k, v in load_file(str(base_dir / "output" / "lyco_te_clip_l_00001_.safetensors")).items()}
    saved = {**unet, **te}
    for k, want in expect.items():
        got = saved[k].float()
        tol = 1e-5 if saved[k].dtype == torch.float32 else 2e-3
        torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=k)
    untouched = UNET + "input_blocks.2.0.in_layers.2.weight"
    assert torch.equal(saved[untouched].float(), sd[untouched].float())
    # and every weight comes back for the next prompt without the LoRA
    assert torch.equal(base, await latent(client, base_dir, txt2img()))
