"""MODEL patch nodes (FreeU, deep shrink, HyperTile, attention multipliers, SAG, PAG, CFG-Zero*,
CFGNorm, Perp-Neg, Differential Diffusion, continuous model sampling): over HTTP on a tiny SD1
checkpoint (neutral settings reproduce the plain run, real settings change it), and each
patch's arithmetic against a formula computed here independently."""
import math
import os

import pytest
import torch
from safetensors.torch import load_file

from models import folders
from models.checkpoint import load_checkpoint
from models.model_patcher import ModelPatcher
from models.sampling.guidance import calc_cond_batch
from models.sampling.ksampler import convert_cond, process_conds
from nodes import guidance_patches as G, model_advanced as MA, unet_patches as U
from tests.tiny_checkpoints import LAYOUT_DIR, write_tiny_checkpoint
from wsclient import run_prompt

pytestmark = pytest.mark.skipif(not os.path.isdir(LAYOUT_DIR), reason="oracle layouts not available")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_sd1(tmp_path_factory):
    return write_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny") / "tiny_sd1.safetensors"), "sd1", seed=3)


@pytest.fixture
def models_dir(base_dir, tiny_sd1):
    os.makedirs(base_dir / "models" / "checkpoints", exist_ok=True)
    os.symlink(tiny_sd1, base_dir / "models" / "checkpoints" / "tiny_sd1.safetensors")
    folders._list_cache.clear()
    return base_dir / "models"


def txt2img(patches=(), size=64, cfg=7.0, sampler="euler", scheduler="normal", steps=3):
    """Checkpoint -> [patch nodes chained on MODEL] -> KSampler -> SaveLatent."""
    prompt = {
        "ck": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1.safetensors"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red cat", "clip": ["ck", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ck", 1]}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
    }
    model = ["ck", 0]
    for i, (cls, inputs) in enumerate(patches):
        prompt[f"p{i}"] = {"class_type": cls, "inputs": {"model": model, **inputs}}
        model = [f"p{i}", 0]
    prompt["ks"] = {"class_type": "KSampler", "inputs": {
        "model": model, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["lat", 0], "seed": 5,
        "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler, "denoise": 1.0}}
    prompt["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["ks", 0], "filename_prefix": "mp"}}
    return prompt


async def run_latent(client, base_dir, prompt):
    resp, events, history = await run_prompt(client, prompt, timeout=120)
    assert "prompt_id" in resp, resp
    assert history["status"]["status_str"] == "success", [e for e in events if e[0] == "execution_error"]
    entry = history["outputs"]["save"]["latents"][0]
    return load_file(str(base_dir / "output" / entry["subfolder"] / entry["filename"]))["latent_tensor"]


async def test_unet_patches_over_http(client, models_dir, base_dir):
    base = await run_latent(client, base_dir, txt2img())
    neutral = [("FreeU", {"b1": 1.0, "b2": 1.0, "s1": 1.0, "s2": 1.0}),
               ("UNetSelfAttentionMultiply", {"q": 1.0, "k": 1.0, "v": 1.0, "out": 1.0}),
               ("PatchModelAddDownscale", {"block_number": 3, "downscale_factor": 2.0, "start_percent": 1.0,
                                           "end_percent": 1.0, "downscale_after_skip": True,
                                           "downscale_method": "bicubic", "upscale_method": "bicubic"})]
    # (FreeU's FFT round trip at s = 1 leaves float noise only)
    torch.testing.assert_close(await run_latent(client, base_dir, txt2img(neutral)), base, rtol=1e-3, atol=1e-3)
    for patch in [("FreeU", {"b1": 1.1, "b2": 1.2, "s1": 0.9, "s2": 0.2}),
                  ("PatchModelAddDownscale", {"block_number": 3, "downscale_factor": 2.0, "start_percent": 0.0,
                                              "end_percent": 0.5, "downscale_after_skip": True,
                                              "downscale_method": "bicubic", "upscale_method": "bicubic"}),
                  ("UNetCrossAttentionMultiply", {"q": 1.0, "k": 1.0, "v": 0.5, "out": 1.0}),
                  ("HyperTile", {"tile_size": 32, "swap_size": 1, "max_depth": 0, "scale_depth": False})]:
        out = await run_latent(client, base_dir, txt2img([patch]))
        assert torch.isfinite(out).all() and (out - base).abs().max() > 1e-2, patch[0]
    # FreeU_V2 normalises channel means over the map: at 64 px the bottleneck is 1x1 (0/0, as in
    # ComfyUI), so it runs at 128 px
    base128 = await run_latent(client, base_dir, txt2img(size=128))
    v2 = await run_latent(client, base_dir, txt2img([("FreeU_V2", {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2})],
                                                    size=128))
    assert torch.isfinite(v2).all() and (v2 - base128).abs().max() > 1e-2
    # the weight multiplier is undone for the next prompt without it
    torch.testing.assert_close(await run_latent(client, base_dir, txt2img()), base)


async def test_guidance_patches_over_http(client, models_dir, base_dir):
    base = await run_latent(client, base_dir, txt2img(size=128))
    pag0 = await run_latent(client, base_dir, txt2img([("PerturbedAttentionGuidance", {"scale": 0.0})], size=128))
    torch.testing.assert_close(pag0, base)
    # SAG records the uncond's middle attention with an explicit softmax: float noise only
    sag0 = await run_latent(client, base_dir, txt2img([("SelfAttentionGuidance", {"scale": 0.0, "blur_sigma": 2.0})],
                                                      size=128))
    torch.testing.assert_close(sag0, base, rtol=0, atol=2e-3)
    for patch in [("PerturbedAttentionGuidance", {"scale": 3.0}),
                  ("SelfAttentionGuidance", {"scale": 0.5, "blur_sigma": 2.0}),
                  ("CFGZeroStar", {}), ("CFGNorm", {"strength": 1.0}), ("DifferentialDiffusion", {})]:
        out = await run_latent(client, base_dir, txt2img([patch], size=128))
        assert torch.isfinite(out).all()
        if patch[0] != "DifferentialDiffusion":  # no noise mask here: nothing to change
            assert (out - base).abs().max() > 1e-2, patch[0]
        else:
            torch.testing.assert_close(out, base)


async def test_perp_neg_with_zero_scale_is_cfg_against_the_empty_prompt(client, models_dir, base_dir):
    prompt = txt2img()
    prompt["empty"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ck", 1]}}
    prompt["noise"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}}
    prompt["sampler"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    prompt["sigmas"] = {"class_type": "BasicScheduler", "inputs": {"model": ["ck", 0], "scheduler": "normal",
                                                                   "steps": 3, "denoise": 1.0}}
    prompt["g"] = {"class_type": "PerpNegGuider", "inputs": {"model": ["ck", 0], "positive": ["pos", 0],
                                                             "negative": ["neg", 0], "empty_conditioning": ["empty", 0],
                                                             "cfg": 7.0, "neg_scale": 0.0}}
    prompt["adv"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["noise", 0], "guider": ["g", 0], "sampler": ["sampler", 0], "sigmas": ["sigmas", 0],
        "latent_image": ["lat", 0]}}
    prompt["save"]["inputs"]["samples"] = ["adv", 0]
    perp = await run_latent(client, base_dir, prompt)
    prompt["ks"]["inputs"]["negative"] = ["empty", 0]
    prompt["save"]["inputs"]["samples"] = ["ks", 0]
    cfg_empty = await run_latent(client, base_dir, prompt)
    torch.testing.assert_close(perp, cfg_empty, rtol=1e-4, atol=1e-4)
    # the deprecated model patch: the same combination through the cfg function
    prompt["pn"] = {"class_type": "PerpNeg", "inputs": {"model": ["ck", 0], "empty_conditioning": ["empty", 0],
                                                        "neg_scale": 0.0}}
    prompt["ks"]["inputs"].update(model=["pn", 0], negative=["neg", 0])
    # (the empty prompt runs in its own model call here, not batched: float noise only)
    torch.testing.assert_close(await run_latent(client, base_dir, prompt), cfg_empty, rtol=0, atol=2e-3)
    prompt["pn"]["inputs"]["neg_scale"] = 1.0
    assert (await run_latent(client, base_dir, prompt) - cfg_empty).abs().max() > 2e-2


async def test_continuous_sampling_over_http(client, models_dir, base_dir):
    for cls, sampling in (("ModelSamplingContinuousEDM", "edm"), ("ModelSamplingContinuousEDM", "eps"),
                          ("ModelSamplingContinuousV", "v_prediction")):
        out = await run_latent(client, base_dir, txt2img([(cls, {"sampling": sampling, "sigma_max": 80.0,
                                                                 "sigma_min": 0.01})], scheduler="karras"))
        assert torch.isfinite(out).all()
    resp, _, _ = await run_prompt(client, txt2img([("ModelSamplingContinuousEDM", {
        "sampling": "cosmos_rflow", "sigma_max": 80.0, "sigma_min": 0.01})]))
    assert "prompt_id" in resp  # valid input; the run reports the unsupported family as an execution error


# -- the arithmetic of each patch, on known tensors -----------------------------------------------
def test_freeu_scales_backbone_and_skip_frequencies():
    mc = 32

    class Model:  # what FreeU reads: the UNet's model_channels
        class model:
            class diffusion_model:
                model_channels = mc
    patch = U.freeu_patch(mc, 1.1, 1.2, 0.9, 0.2, v2=False)
    h = torch.randn(2, 4 * mc, 4, 6)
    skip = torch.randn(2, 4 * mc, 4, 6)
    out_h, out_skip = patch(h.clone(), skip.clone(), {})
    torch.testing.assert_close(out_h[:, :2 * mc], h[:, :2 * mc] * 1.1)
    torch.testing.assert_close(out_h[:, 2 * mc:], h[:, 2 * mc:])
    # low frequencies (0 and -1 along each axis, the 2x2 around DC after centring) scaled by s1
    spectrum = torch.fft.fft2(skip.double())
    for r in (0, 3):
        for c in (0, 5):
            spectrum[..., r, c] *= 0.9
    torch.testing.assert_close(out_skip.double(), torch.fft.ifft2(spectrum).real, rtol=1e-5, atol=1e-5)
    # widths other than 4x / 2x model_channels pass untouched
    other = torch.randn(1, mc, 4, 4)
    assert patch(other, other, {})[0] is other
    # V2: the factor follows the min-max normalised channel mean
    v2 = U.freeu_patch(mc, 1.3, 1.4, 0.9, 0.2, v2=True)
    h2 = torch.randn(1, 2 * mc, 3, 3)
    out2, _ = v2(h2.clone(), torch.randn(1, 2 * mc, 3, 3), {})
    mean = h2.mean(1, keepdim=True)
    norm = (mean - mean.min()) / (mean.max() - mean.min())
    torch.testing.assert_close(out2[:, :mc], h2[:, :mc] * (0.4 * norm + 1))
    (m,) = U.FreeU.execute(ModelPatcherStub(Model.model), 1.1, 1.2, 0.9, 0.2).args
    assert len(m.model_options["transformer_options"]["patches"]["output_block_patch"]) == 1


class ModelPatcherStub:
    def __init__(self, model):
        self.model = model
        self.model_options = {"transformer_options": {}}

    def clone(self):
        return self

    def set_model_output_block_patch(self, patch):
        self.model_options["transformer_options"].setdefault("patches", {}).setdefault(
            "output_block_patch", []).append(patch)


@pytest.fixture(scope="module")
def sd1(tiny_sd1):
    return load_checkpoint(tiny_sd1, output_vae=False, output_clip=False).model


def conds_for(model, x, seed=1):
    ctx = torch.randn(1, 77, model.diffusion_model.config.context_dim, generator=torch.Generator().manual_seed(seed))
    return process_conds(model, x, {"positive": convert_cond([[ctx, {}]])}, "cpu")["positive"]


def test_deep_shrink_downscales_inside_the_sigma_window(sd1):
    p = ModelPatcher(sd1)
    (m,) = U.PatchModelAddDownscale.execute(p, 3, 2.0, 0.0, 0.5, True, "bicubic", "bicubic").args
    seen = {}

    def record(h, options):  # runs after the shrink patch: the shapes each input block hands on
        seen[options["block"][1]] = tuple(h.shape)
        return h
    m.set_model_input_block_patch_after_skip(record)
    x = torch.randn(1, 4, 16, 16)
    c = conds_for(sd1, x)
    with torch.inference_mode():
        plain = calc_cond_batch(sd1, [c], x, torch.tensor([0.05]), p.model_options)[0]
        low_sigma = calc_cond_batch(sd1, [c], x, torch.tensor([0.05]), m.model_options)[0]
        seen.clear()
        calc_cond_batch(sd1, [c], x, torch.tensor([10.0]), m.model_options)
    torch.testing.assert_close(low_sigma, plain)  # sigma 0.05 is past end_percent 0.5
    assert seen[3][-2:] == (4, 4) and seen[2][-2:] == (16, 16)  # block 3 (8x8 after the downsample) halved


def test_attention_multiplier_scales_weights_and_restores(sd1):
    p = ModelPatcher(sd1)
    key = "input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight"
    original = sd1.diffusion_model.state_dict()[key].clone()
    (m,) = U.UNetCrossAttentionMultiply.execute(p, 1.0, 1.0, 0.5, 2.0).args
    m.prepare_for_sampling()
    sd = sd1.diffusion_model.state_dict()
    torch.testing.assert_close(sd[key], original * 0.5)
    bias = "input_blocks.1.1.transformer_blocks.0.attn2.to_out.0.bias"
    q_key = "input_blocks.1.1.transformer_blocks.0.attn2.to_q.weight"
    assert not any(("unet", q_key) in e[0] for e in m.weight_patches)  # factor 1: no patch at all
    p.prepare_for_sampling()
    original_bias = sd1.diffusion_model.state_dict()[bias].clone()
    m.prepare_for_sampling()
    torch.testing.assert_close(sd1.diffusion_model.state_dict()[bias], original_bias * 2.0)
    p.prepare_for_sampling()
    torch.testing.assert_close(sd1.diffusion_model.state_dict()[key], original)


def test_hypertile_tiles_are_undone_exactly():
    tile_in, tile_out = U.hypertile_patches(32, 1, 0, False)
    q = torch.randn(2, 64, 8)
    tiled, k, v = tile_in(q, q, q, {"original_shape": [2, 4, 8, 8]})
    assert tiled.shape == (8, 16, 8)  # 8x8 tokens in 2x2 tiles of 4x4
    # tile (row 1, col 0) of item 0 holds rows 4..7, columns 0..3
    torch.testing.assert_close(tiled[2], q[0].view(8, 8, 8)[4:, :4].reshape(16, 8))
    torch.testing.assert_close(tile_out(tiled, {}), q)
    untouched, _, _ = tile_in(q[:, :16], q, q, {"original_shape": [2, 4, 8, 8]})  # another resolution
    assert untouched.shape == (2, 16, 8)


def test_pag_adds_the_difference_to_identity_attention(sd1):
    p = ModelPatcher(sd1)
    (m,) = G.PerturbedAttentionGuidance.execute(p, 2.0).args
    x = torch.randn(1, 4, 16, 16)
    sigma = torch.tensor([3.0])
    c = conds_for(sd1, x)
    with torch.inference_mode():
        cond_pred = calc_cond_batch(sd1, [c], x, sigma, {})[0]
        # independent perturbation: every middle-block self-attention returns to_out(to_v(x))
        mid_attn = [blk.attn1 for layer in sd1.diffusion_model.middle_block if hasattr(layer, "transformer_blocks")
                    for blk in layer.transformer_blocks]
        hooks = [a.register_forward_hook(lambda mod, args, out: mod.to_out(mod.to_v(args[0]))) for a in mid_attn]
        try:
            perturbed = calc_cond_batch(sd1, [c], x, sigma, {})[0]
        finally:
            for hk in hooks:
                hk.remove()
        denoised = torch.randn_like(x)
        fn = m.model_options["sampler_post_cfg_function"][0]
        out = fn({"model": sd1, "cond_denoised": cond_pred, "cond": c, "denoised": denoised, "sigma": sigma,
                  "model_options": m.model_options, "input": x})
    assert not torch.allclose(perturbed, cond_pred)
    torch.testing.assert_close(out, denoised + (cond_pred - perturbed) * 2.0, rtol=1e-4, atol=1e-4)


def test_sag_blur_map_and_scores():
    q, k, v = torch.randn(2, 16, 8), torch.randn(2, 16, 8), torch.randn(2, 16, 8)
    out, scores = G.attention_with_scores(q, k, v, heads=2)
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(
        q.view(2, 16, 2, 4).transpose(1, 2), k.view(2, 16, 2, 4).transpose(1, 2),
        v.view(2, 16, 2, 4).transpose(1, 2)).transpose(1, 2).reshape(2, 16, 8), rtol=1e-5, atol=1e-5)
    assert scores.shape == (4, 16, 16) and torch.allclose(scores.sum(-1), torch.ones(4, 16))
    # attention concentrated on token 5 (row 1, col 1 of a 4x4 grid): only that cell is blurred
    focused = torch.zeros(2, 16, 16)
    focused[:, :, 5] = 1.0
    x0 = torch.randn(1, 3, 8, 8)
    blurred = G.blur_where_attended(x0, focused, sigma=2.0)
    full = G.gaussian_blur(x0, 9, 2.0)
    torch.testing.assert_close(blurred[:, :, 2:4, 2:4], full[:, :, 2:4, 2:4])
    torch.testing.assert_close(blurred[:, :, :2], x0[:, :, :2])
    # the blur kernel: a normalised separable Gaussian (pixel sigma), reflect padding
    impulse = torch.zeros(1, 1, 17, 17)
    impulse[0, 0, 8, 8] = 1.0
    g = torch.exp(-0.5 * (torch.arange(-4.0, 5.0) / 2.0) ** 2)
    g = g / g.sum()
    torch.testing.assert_close(G.gaussian_blur(impulse, 9, 2.0)[0, 0, 4:13, 4:13], torch.outer(g, g))


def test_cfg_zero_star_and_cfg_norm_formulas():
    class P:
        def __init__(self):
            self.model_options = {}

        def clone(self):
            return self

        def set_model_sampler_post_cfg_function(self, fn, disable_cfg1_optimization=False):
            self.model_options.setdefault("post", []).append(fn)

    x, cond, uncond = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    scale = 5.0
    args = {"input": x, "cond_denoised": cond, "uncond_denoised": uncond, "cond_scale": scale,
            "denoised": uncond + (cond - uncond) * scale}
    (m,) = G.CFGZeroStar.execute(P()).args
    out = m.model_options["post"][0](args)
    for b in range(2):  # CFG-Zero*: uncond scaled by the projection of the cond noise onto the uncond noise
        ec, eu = (x[b] - cond[b]).flatten(), (x[b] - uncond[b]).flatten()
        alpha = torch.dot(ec, eu) / (torch.dot(eu, eu) + 1e-8)
        torch.testing.assert_close(out[b], uncond[b] * alpha + scale * (cond[b] - uncond[b] * alpha),
                                   rtol=1e-5, atol=1e-5)
    (n,) = G.CFGNorm.execute(P(), 1.0).args
    capped = n.model_options["post"][0](args)
    norms = capped.norm(dim=1)
    assert torch.all(norms <= torch.maximum(cond.norm(dim=1), torch.zeros(1)) + 1e-4)
    small = args["denoised"].norm(dim=1) < cond.norm(dim=1)
    torch.testing.assert_close(capped.norm(dim=1)[small], args["denoised"].norm(dim=1)[small])


def test_perp_neg_removes_only_the_perpendicular_part():
    empty = torch.zeros(1, 4, 2, 2)
    pos = torch.randn(1, 4, 2, 2)
    parallel_neg = pos * 0.5  # a negative along the positive direction is ignored entirely
    torch.testing.assert_close(G.perp_neg(pos, parallel_neg, empty, 1.0, 3.0), pos * 3.0)
    ortho = torch.randn(1, 4, 2, 2)
    ortho = ortho - (ortho * pos).sum() / (pos * pos).sum() * pos
    torch.testing.assert_close(G.perp_neg(pos, ortho, empty, 2.0, 3.0), 3.0 * (pos - 2.0 * ortho))


def test_differential_diffusion_mask_threshold():
    from models.sampling.model_sampling import DiscreteSchedule

    ms = DiscreteSchedule()

    class Guider:
        class inner_model:
            model_sampling = ms
    sigmas = torch.tensor([14.6146, 5.0, 1.0, 0.0])
    mask = torch.linspace(0, 1, 11).view(1, 1, 1, 11)
    t_from, t_to, t_now = ms.timestep(sigmas[0]), ms.timestep(ms.sigma_min), ms.timestep(torch.tensor(5.0))
    threshold = float((t_now - t_to) / (t_from - t_to))
    out = G.differential_mask(torch.tensor([5.0]), mask, {"model": Guider, "sigmas": sigmas})
    torch.testing.assert_close(out, (mask >= threshold).float())
    half = G.differential_mask(torch.tensor([5.0]), mask, {"model": Guider, "sigmas": sigmas}, strength=0.5)
    torch.testing.assert_close(half, 0.5 * (mask >= threshold).float() + 0.5 * mask)


def test_continuous_schedules():
    from models.sampling.model_sampling import ContinuousEDMSchedule, ContinuousVSchedule

    edm = ContinuousEDMSchedule("edm", 0.002, 80.0, 0.5)
    torch.testing.assert_close(edm.sigma_min, torch.tensor(0.002), rtol=1e-5, atol=0)
    torch.testing.assert_close(edm.sigma_max, torch.tensor(80.0), rtol=1e-5, atol=0)
    s = torch.tensor([3.0])
    torch.testing.assert_close(edm.timestep(s), 0.25 * torch.log(s))
    torch.testing.assert_close(edm.sigma(edm.timestep(s)), s)
    x, out = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    # Karras' EDM preconditioning: c_skip = sd^2/(s^2+sd^2), c_out = s*sd/sqrt(s^2+sd^2)
    expected = x * 0.25 / (9 + 0.25) + out * 3.0 * 0.5 / math.sqrt(9 + 0.25)
    torch.testing.assert_close(edm.calculate_denoised(s, out, x), expected)
    torch.testing.assert_close(edm.calculate_input(s, x), x / math.sqrt(9 + 0.25))
    assert math.isclose(edm.percent_to_sigma(0.5), math.sqrt(0.002 * 80.0), rel_tol=1e-4)
    v = ContinuousVSchedule("v_prediction", 0.03, 500.0, 1.0)
    torch.testing.assert_close(v.timestep(s), torch.atan(s) * 2 / math.pi)
    torch.testing.assert_close(v.sigma(v.timestep(s)), s)

    class P:
        def __init__(self):
            self.object_patches = {}

        def clone(self):
            return self

        def add_object_patch(self, name, obj):
            self.object_patches[name] = obj
    (m,) = MA.ModelSamplingContinuousEDM().patch(P(), "edm_playground_v2.5", 80.0, 0.002)
    latent_format = m.object_patches["latent_format"]
    z = torch.randn(1, 4, 2, 2)
    torch.testing.assert_close(latent_format.process_out(latent_format.process_in(z)), z, rtol=1e-5, atol=1e-5)
    assert m.object_patches["model_sampling"].sigma_data == 0.5


async def test_object_info_shapes(client):
    info = await (await client.get("/object_info")).json()
    assert info["FreeU"]["python_module"] == "comfy_extras.nodes_freelunch"
    assert info["FreeU"]["category"] == "model_patches/unet"
    assert info["FreeU_V2"]["input"]["required"]["b1"] == ["FLOAT", {"default": 1.3, "min": 0.0, "max": 10.0,
                                                                     "step": 0.01}]
    shrink = info["PatchModelAddDownscale"]
    assert shrink["display_name"] == "PatchModelAddDownscale (Kohya Deep Shrink)"
    assert shrink["input"]["required"]["end_percent"][1]["default"] == 0.35
    assert shrink["input"]["required"]["downscale_method"][1]["options"][0] == "bicubic"
    assert info["SelfAttentionGuidance"]["python_module"] == "comfy_extras.nodes_sag"
    assert info["SelfAttentionGuidance"]["category"] == "_for_testing"
    assert info["PerturbedAttentionGuidance"]["input"]["required"]["scale"][1]["round"] == 0.01
    assert info["CFGZeroStar"]["output_name"] == ["patched_model"]
    assert info["PerpNeg"]["deprecated"] is True and info["PerpNegGuider"]["output"] == ["GUIDER"]
    assert "strength" in info["DifferentialDiffusion"]["input"]["optional"]
    edm = info["ModelSamplingContinuousEDM"]
    assert edm["python_module"] == "comfy_extras.nodes_model_advanced"
    assert edm["input"]["required"]["sampling"][0] == ["v_prediction", "edm", "edm_playground_v2.5", "eps",
                                                        "cosmos_rflow"]
    assert edm["input"]["required"]["sigma_max"][1] == {"default": 120.0, "min": 0.0, "max": 1000.0,
                                                        "step": 0.001, "round": False}
    assert info["CLIPAttentionMultiply"]["output"] == ["CLIP"]
    assert info["HyperTile"]["python_module"] == "comfy_extras.nodes_hypertile"
