"""GITSScheduler, ExtendIntermediateSigmas, SamplingPercentToSigma, AddNoise, SamplerER_SDE,
SamplerEulerCFGpp and SamplerLCMUpscale: schedules against their rules, and the samplers over
HTTP on a tiny SD1 checkpoint."""
import math
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models import folders
from models.sampling.gits_levels import NOISE_LEVELS
from models.sampling.model_sampling import DiscreteSchedule
from nodes.sampling_extras import ExtendIntermediateSigmas
from nodes.sampling_gits import GITSScheduler
from tests.tiny_checkpoints import LAYOUT_DIR, write_tiny_checkpoint
from wsclient import run_prompt

SD1_SCALE = 0.18215  # SD1's latent scale factor: process_in multiplies, process_out divides


def log_interp(levels, n):
    """Resample a decreasing list to n points, evenly in position, linearly in log sigma."""
    logs = [math.log(v) for v in reversed(levels)]
    out = []
    for k in range(n):
        pos = k / (n - 1) * (len(levels) - 1)
        lo = min(int(pos), len(levels) - 2)
        w = pos - lo
        out.append(math.exp(logs[lo] * (1 - w) + logs[lo + 1] * w))
    return out[::-1]


# -- schedules --------------------------------------------------------------------------------

def test_gits_table_shape():
    assert sorted(NOISE_LEVELS) == [round(0.80 + 0.05 * i, 2) for i in range(15)]
    for rows in NOISE_LEVELS.values():
        assert [len(r) for r in rows] == list(range(3, 22))  # 2..20 steps
        for r in rows:
            assert all(a > b for a, b in zip(r, r[1:]))


@pytest.mark.parametrize("coeff,steps,denoise", [(1.2, 10, 1.0), (0.8, 2, 1.0), (1.5, 20, 1.0),
                                                  (1.05, 7, 0.5), (1.2, 30, 1.0), (0.95, 45, 0.4)])
def test_gits_sigmas_follow_table_and_interpolation(coeff, steps, denoise):
    (sigmas,) = GITSScheduler.execute(coeff, steps, denoise).args
    row = NOISE_LEVELS[round(coeff, 2)]
    full = list(row[steps - 2]) if steps <= 20 else log_interp(row[-1], steps + 1)
    kept = steps if denoise >= 1.0 else round(steps * denoise)
    expected = full[-(kept + 1):]
    expected[-1] = 0.0
    assert sigmas.dtype == torch.float32 and len(sigmas) == kept + 1
    torch.testing.assert_close(sigmas, torch.tensor(expected, dtype=torch.float32), rtol=1e-6, atol=1e-6)


def test_gits_zero_denoise_and_bad_coeff():
    assert len(GITSScheduler.execute(1.2, 10, 0.0).args[0]) == 0
    with pytest.raises(ValueError):
        GITSScheduler.execute(1.23, 10, 1.0)


@pytest.mark.parametrize("spacing", ["linear", "cosine", "sine"])
def test_extend_intermediate_sigmas(spacing):
    sigmas = torch.tensor([14.0, 10.0, 6.0, 1.0, 0.0])
    (out,) = ExtendIntermediateSigmas.execute(sigmas, 3, -1.0, 5.0, spacing).args
    f = {"linear": lambda t: t, "cosine": lambda t: math.sin(t * math.pi / 2),
         "sine": lambda t: 1 - math.cos(t * math.pi / 2)}[spacing]
    expected = []
    for a, b in zip(sigmas.tolist(), sigmas.tolist()[1:]):
        expected.append(a)
        if a >= 5.0:  # intervals starting at or above end_at_sigma get 2 inserted points
            expected += [a + f(k / 3) * (b - a) for k in (1, 2)]
    expected.append(0.0)
    torch.testing.assert_close(out, torch.tensor(expected), rtol=1e-6, atol=1e-6)
    # an upper bound keeps the first interval as it is
    (bounded,) = ExtendIntermediateSigmas.execute(sigmas, 3, 12.0, 5.0, spacing).args
    assert bounded[:2].tolist() == [14.0, 10.0] and len(bounded) == len(out) - 2


# -- over HTTP --------------------------------------------------------------------------------

needs_layouts = pytest.mark.skipif(not os.path.isdir(LAYOUT_DIR), reason="oracle layouts not available")


@pytest.fixture
def sd1(base_dir):
    write_tiny_checkpoint(str(base_dir / "models" / "checkpoints" / "tiny_sd1.safetensors"), "sd1", seed=3)
    folders._list_cache.clear()


def base_nodes(size=64):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red cat", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
    }


def save(node, prefix):
    return {"class_type": "SaveLatent", "inputs": {"samples": [node, 0], "filename_prefix": prefix}}


async def run_ok(client, prompt):
    resp, events, history = await run_prompt(client, prompt, timeout=120)
    assert "prompt_id" in resp, resp
    assert history["status"]["status_str"] == "success", [e for e in events if e[0] == "execution_error"]
    return history


def saved(base_dir, history, node):
    entry = history["outputs"][node]["latents"][0]
    return load_file(str(base_dir / "output" / entry["subfolder"] / entry["filename"]))["latent_tensor"]


def karras(sigma_max, node_sigma=None):
    inputs = {"steps": 2, "sigma_max": sigma_max, "sigma_min": 0.01, "rho": 7.0}
    if node_sigma is not None:
        inputs["sigma_max"] = node_sigma
    return {"class_type": "KarrasScheduler", "inputs": inputs}


@needs_layouts
async def test_add_noise_adds_seeded_noise_times_sigma_span(client, sd1, base_dir):
    p = base_nodes(size=64)
    p.update({
        "10": {"class_type": "RandomNoise", "inputs": {"noise_seed": 11}},
        "11": karras(3.0),  # [3, ..., 0.01, 0]: span 3
        "12": {"class_type": "AddNoise", "inputs": {"model": ["1", 0], "noise": ["10", 0], "sigmas": ["11", 0],
                                                   "latent_image": ["4", 0]}},
        "13": {"class_type": "RandomNoise", "inputs": {"noise_seed": 12}},
        "14": {"class_type": "SplitSigmas", "inputs": {"sigmas": ["11", 0], "step": 0}},  # [3]: a single sigma
        "15": {"class_type": "AddNoise", "inputs": {"model": ["1", 0], "noise": ["13", 0], "sigmas": ["14", 0],
                                                   "latent_image": ["12", 0]}},
        "20": save("12", "noised"), "21": save("15", "noised_twice"),
    })
    h = await run_ok(client, p)
    first, second = saved(base_dir, h, "20"), saved(base_dir, h, "21")
    shape = (1, 4, 8, 8)
    n1 = torch.randn(shape, generator=torch.manual_seed(11))
    n2 = torch.randn(shape, generator=torch.manual_seed(12))
    # the empty latent is not shifted in; the result is shifted out of model space
    torch.testing.assert_close(first, n1 * 3.0 / SD1_SCALE, rtol=1e-5, atol=1e-5)
    # a non-empty latent goes into model space, gets the noise, and comes back
    torch.testing.assert_close(second, (first * SD1_SCALE + n2 * 3.0) / SD1_SCALE, rtol=1e-5, atol=1e-4)


@needs_layouts
@pytest.mark.parametrize("percent,actual", [(0.3, False), (0.75, False), (0.0, True), (1.0, True)])
async def test_sampling_percent_to_sigma_is_the_models(client, sd1, base_dir, percent, actual):
    """The sigma reaches AddNoise through KarrasScheduler's sigma_max: the noise's scale shows it."""
    ms = DiscreteSchedule()  # SD1's schedule (eps, scaled linear betas)
    expected = ms.percent_to_sigma(percent)
    if actual:
        expected = float(ms.sigma_max) if percent == 0.0 else float(ms.sigma_min)
    p = base_nodes(size=64)
    p.update({
        "9": {"class_type": "SamplingPercentToSigma", "inputs": {"model": ["1", 0], "sampling_percent": percent,
                                                                "return_actual_sigma": actual}},
        "10": {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}},
        "11": {"class_type": "KarrasScheduler", "inputs": {"steps": 2, "sigma_max": ["9", 0], "sigma_min": 0.001,
                                                           "rho": 7.0}},
        "12": {"class_type": "AddNoise", "inputs": {"model": ["1", 0], "noise": ["10", 0], "sigmas": ["11", 0],
                                                   "latent_image": ["4", 0]}},
        "20": save("12", "pct"),
    })
    out = saved(base_dir, await run_ok(client, p), "20")
    noise = torch.randn((1, 4, 8, 8), generator=torch.manual_seed(5))
    torch.testing.assert_close(out, noise * expected / SD1_SCALE, rtol=1e-5, atol=1e-5)


def custom_sampling(sampler, seed=7, size=64, steps=3):
    p = base_nodes(size)
    p.update({
        "8": sampler,
        "9": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "karras", "steps": steps,
                                                         "denoise": 1.0}},
        "10": {"class_type": "SamplerCustom", "inputs": {
            "model": ["1", 0], "add_noise": True, "noise_seed": seed, "cfg": 4.0, "positive": ["2", 0],
            "negative": ["3", 0], "sampler": ["8", 0], "sigmas": ["9", 0], "latent_image": ["4", 0]}},
        "20": save("10", "custom"),
    })
    return p


async def sample(client, base_dir, sampler, **kw):
    return saved(base_dir, await run_ok(client, custom_sampling(sampler, **kw)), "20")


def er_sde(solver="ER-SDE", stage=3, eta=1.0, s_noise=1.0):
    return {"class_type": "SamplerER_SDE", "inputs": {"solver_type": solver, "max_stage": stage, "eta": eta,
                                                      "s_noise": s_noise}}


def select(name):
    return {"class_type": "KSamplerSelect", "inputs": {"sampler_name": name}}


@needs_layouts
async def test_er_sde_sampler_runs_and_repeats(client, sd1, base_dir):
    a = await sample(client, base_dir, er_sde())
    assert a.shape == (1, 4, 8, 8) and torch.isfinite(a).all()
    torch.testing.assert_close(await sample(client, base_dir, er_sde()), a, rtol=0, atol=0)
    # the node's ER-SDE is the KSampler's er_sde
    torch.testing.assert_close(await sample(client, base_dir, select("er_sde")), a, rtol=0, atol=0)
    assert not torch.equal(await sample(client, base_dir, er_sde(), seed=8), a)
    # ODE and eta-0 reverse-time SDE are the same deterministic solver, unlike the SDE
    ode = await sample(client, base_dir, er_sde("ODE"))
    torch.testing.assert_close(await sample(client, base_dir, er_sde("Reverse-time SDE", eta=0.0)), ode)
    rsde = await sample(client, base_dir, er_sde("Reverse-time SDE", stage=2, eta=0.5))
    assert torch.isfinite(rsde).all() and not torch.equal(rsde, ode) and not torch.equal(rsde, a)


def cfgpp(version):
    return {"class_type": "SamplerEulerCFGpp", "inputs": {"version": version}}


@needs_layouts
async def test_euler_cfgpp_versions(client, sd1, base_dir):
    regular = await sample(client, base_dir, cfgpp("regular"))
    torch.testing.assert_close(await sample(client, base_dir, select("euler_cfg_pp")), regular, rtol=0, atol=0)
    alt = await sample(client, base_dir, cfgpp("alternative"))
    assert alt.shape == regular.shape and torch.isfinite(alt).all() and not torch.equal(alt, regular)
    torch.testing.assert_close(await sample(client, base_dir, cfgpp("alternative")), alt, rtol=0, atol=0)


def lcm_upscale(ratio, steps=-1, method="bislerp"):
    return {"class_type": "SamplerLCMUpscale", "inputs": {"scale_ratio": ratio, "scale_steps": steps,
                                                          "upscale_method": method}}


@needs_layouts
async def test_lcm_upscale_grows_the_latent(client, sd1, base_dir):
    out = await sample(client, base_dir, lcm_upscale(1.5), steps=4)
    assert out.shape == (1, 4, 12, 12) and torch.isfinite(out).all()  # 8 * 1.5
    torch.testing.assert_close(await sample(client, base_dir, lcm_upscale(1.5), steps=4), out, rtol=0, atol=0)
    # ratio 1 keeps the size (its fresh noise is the global generator's, not lcm's seeded sampler)
    same = await sample(client, base_dir, lcm_upscale(1.0, method="bilinear"), steps=4)
    assert same.shape == (1, 4, 8, 8) and torch.isfinite(same).all()
    wide = await sample(client, base_dir, lcm_upscale(2.0, steps=1, method="nearest-exact"), steps=4)
    assert wide.shape == (1, 4, 16, 16)


def test_lcm_upscale_factors_per_step():
    """Unit level: the sizes after each step follow linspace(1, total, upscale_steps)[1:]."""
    from models.sampling.samplers_advanced import sample_lcm_upscale
    sizes = []

    def model(x, sigma, **kw):
        sizes.append(x.shape[-1])
        return x * 0.5

    torch.manual_seed(0)
    sigmas = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.0])
    out = sample_lcm_upscale(model, torch.ones(1, 4, 10, 10), sigmas, total_upscale=3.0, upscale_method="bilinear")
    factors = np.linspace(1.0, 3.0, len(sigmas) // 2 + 1)[1:]
    assert sizes == [10] + [round(10 * f) for f in factors] + [30] * (5 - 1 - len(factors))
    assert out.shape == (1, 4, 30, 30)


async def test_nodes_in_object_info(client):
    info = await (await client.get("/object_info")).json()
    expect = {"GITSScheduler": ("comfy_extras.nodes_gits", "sampling/custom_sampling/schedulers"),
              "AddNoise": ("comfy_extras.nodes_custom_sampler", "_for_testing/custom_sampling/noise"),
              "SamplerER_SDE": ("comfy_extras.nodes_custom_sampler", "sampling/custom_sampling/samplers"),
              "ExtendIntermediateSigmas": ("comfy_extras.nodes_custom_sampler", "sampling/custom_sampling/sigmas"),
              "SamplingPercentToSigma": ("comfy_extras.nodes_custom_sampler", "sampling/custom_sampling/sigmas"),
              "SamplerEulerCFGpp": ("comfy_extras.nodes_advanced_samplers", "_for_testing"),
              "SamplerLCMUpscale": ("comfy_extras.nodes_advanced_samplers", "sampling/custom_sampling/samplers")}
    for name, (module, category) in expect.items():
        assert info[name]["python_module"] == module and info[name]["category"] == category, name
    gits = info["GITSScheduler"]["input"]["required"]
    assert gits["coeff"][1]["default"] == 1.2 and gits["coeff"][1]["step"] == 0.05
    assert (gits["steps"][1]["default"], gits["steps"][1]["min"], gits["steps"][1]["max"]) == (10, 2, 1000)
    assert info["SamplerEulerCFGpp"]["display_name"] == "SamplerEulerCFG++"
    assert info["SamplerEulerCFGpp"]["experimental"] and info["AddNoise"]["experimental"]
    assert info["SamplingPercentToSigma"]["output"] == ["FLOAT"]
    solver = info["SamplerER_SDE"]["input"]["required"]["solver_type"]
    assert solver[0] == "COMBO" and solver[1]["options"] == ["ER-SDE", "Reverse-time SDE", "ODE"]


# -- image conditioning (InstructPix2Pix, SD 4x upscaler) --------------------------------------

class RecordingVAE:
    """Encodes by 8x average pooling into 4 channels, recording what it was given."""

    def __init__(self):
        self.seen = None

    def encode(self, pixels):
        self.seen = pixels
        pooled = torch.nn.functional.avg_pool2d(pixels.movedim(-1, 1), 8)
        return torch.cat([pooled, pooled[:, :1]], dim=1)


def test_ip2p_crops_encodes_and_conditions():
    from nodes.conditioning_models import InstructPixToPixConditioning
    pixels = torch.rand(2, 21, 34, 3)
    vae = RecordingVAE()
    pos = [[torch.ones(1, 77, 8), {"strength": 0.5}]]
    neg = [[torch.zeros(1, 77, 8), {}]]
    p, n, latent = InstructPixToPixConditioning.execute(pos, neg, pixels, vae).args
    # 21 -> 16 (offset 2), 34 -> 32 (offset 1)
    assert torch.equal(vae.seen, pixels[:, 2:18, 1:33, :])
    concat = vae.encode(pixels[:, 2:18, 1:33, :])
    for cond in (p, n):
        assert torch.equal(cond[0][1]["concat_latent_image"], concat)
    assert p[0][1]["strength"] == 0.5 and "concat_latent_image" not in pos[0][1]  # inputs untouched
    assert latent["samples"].shape == concat.shape and not latent["samples"].any()
    aligned = torch.rand(1, 16, 24, 3)
    InstructPixToPixConditioning.execute(pos, neg, aligned, vae)
    assert vae.seen is aligned


def test_sd4x_upscale_conditioning():
    from nodes.conditioning_models import SD_4XUpscale_Conditioning
    images = torch.rand(2, 10, 12, 3)
    pos = [[torch.ones(1, 77, 8), {}]]
    p, n, latent = SD_4XUpscale_Conditioning.execute(images, pos, pos, 2.0, 0.25).args
    # output 24x20 -> latent and low-res image at 6x5; same aspect, so no crop
    expected = torch.nn.functional.interpolate(images.movedim(-1, 1) * 2 - 1, size=(5, 6), mode="bilinear")
    for cond in (p, n):
        torch.testing.assert_close(cond[0][1]["concat_image"], expected)
        assert cond[0][1]["noise_augmentation"] == 0.25
    assert latent["samples"].shape == (2, 4, 5, 6) and not latent["samples"].any()
    _, _, same = SD_4XUpscale_Conditioning.execute(images, pos, pos, 4.0, 0.0).args
    assert same["samples"].shape == (2, 4, 10, 12)


@needs_layouts
async def test_image_conditioning_nodes_over_http(client, sd1, base_dir):
    p = base_nodes()
    p.update({
        "5": {"class_type": "EmptyImage", "inputs": {"width": 70, "height": 66, "batch_size": 1, "color": 0x808080}},
        "6": {"class_type": "InstructPixToPixConditioning", "inputs": {
            "positive": ["2", 0], "negative": ["3", 0], "vae": ["1", 2], "pixels": ["5", 0]}},
        "7": {"class_type": "SD_4XUpscale_Conditioning", "inputs": {
            "images": ["5", 0], "positive": ["2", 0], "negative": ["3", 0], "scale_ratio": 4.0,
            "noise_augmentation": 0.2}},
        "20": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 2], "filename_prefix": "ip2p"}},
        "21": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 2], "filename_prefix": "sd4x"}},
    })
    h = await run_ok(client, p)
    ip2p, sd4x = saved(base_dir, h, "20"), saved(base_dir, h, "21")
    assert ip2p.shape == (1, 4, 8, 8) and not ip2p.any()  # 66x70 cropped to 64x64
    assert sd4x.shape == (1, 4, 66, 70) and not sd4x.any()
    info = await (await client.get("/object_info")).json()
    assert info["InstructPixToPixConditioning"]["python_module"] == "comfy_extras.nodes_ip2p"
    assert info["SD_4XUpscale_Conditioning"]["python_module"] == "comfy_extras.nodes_sdupscale"
    assert info["SD_4XUpscale_Conditioning"]["category"] == "conditioning/upscale_diffusion"
