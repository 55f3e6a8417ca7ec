"""ControlNets, difference ControlNets, Control-LoRA and T2I-Adapters on tiny seeded files
in the real key layouts, loaded through the same code as full-size files."""
import json
import logging
import os

import pytest
import torch

from models.checkpoint import build_diffusion_model
from models.controlnet import ControlLora, ControlNet, T2IAdapter, broadcast_hint
from models.controlnet_load import load_controlnet, load_controlnet_state_dict
from models.controlnet_models import ControlNetModel
from models.model_patcher import ModelPatcher
from models.resize import common_upscale
from models.state_dict import DictSource, ModelFileError
from tiny_checkpoints import CLIP_G_WIDTH, LAYOUT_DIR, tiny_checkpoint
from tiny_controlnets import (tiny_control_lora, tiny_controlnet, tiny_t2i_adapter, to_diffusers_t2i,
                              write)

torch.set_num_threads(1)

CTX = {"sd1": 48, "sd2": 64, "sdxl": 128}


@pytest.fixture(scope="module")
def models():
    """Tiny base models per family (built once for the module)."""
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = build_diffusion_model(tiny_checkpoint(family, seed=1))
        return cache[family]
    return get


def conds(family, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = {"c_crossattn": torch.randn(batch, 77, CTX[family], generator=g)}
    if family == "sdxl":
        c["y"] = torch.randn(batch, CLIP_G_WIDTH + 1536, generator=g)
    return c


def hint_image(b=1, h=128, w=128, c=3, seed=5):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def ready(control, model, hint=None, strength=1.0, percent=(0.0, 1.0)):
    control.set_cond_hint(hint_image() if hint is None else hint, strength, percent)
    control.pre_run(model, model.model_sampling.percent_to_sigma)
    return control


def sigma_at(model, percent=0.5):
    return torch.tensor([model.model_sampling.percent_to_sigma(percent)])


def x_latent(batch=1, h=16, w=16, seed=2):
    return torch.randn(batch, 4, h, w, generator=torch.Generator().manual_seed(seed)) * 3


def run_unet(model, x, sigma, c, control=None):
    return model.apply_model(x, sigma, control=control, **c)


# -- loading: the real layouts fit the network -----------------------------------------------

def test_full_size_layouts_fit_the_network():
    """The networks built from the real files' shapes have exactly their keys and shapes
    (meta tensors: no memory)."""
    def meta(layout):
        with open(os.path.join(LAYOUT_DIR, layout + ".json")) as f:
            return {k: torch.empty(v["shape"], device="meta") for k, v in json.load(f)["tensors"].items()}
    sd = meta("sd15_controlnet")
    from models.controlnet_load import controlnet_config
    cfg = controlnet_config(DictSource(sd), "control_model.")
    assert (cfg.model_channels, cfg.context_dim, cfg.num_heads) == (320, 768, 8)
    with torch.device("meta"):
        net = ControlNetModel(cfg, 3)
    own = {"control_model." + k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert own == {k: tuple(v.shape) for k, v in sd.items()}

    xl = {k[len("model.diffusion_model."):]: v for k, v in meta("sdxl").items() if k.startswith("model.diffusion_model.")}
    from models.detect import detect_unet_config
    with torch.device("meta"):
        net = ControlNetModel(detect_unet_config(DictSource(xl), ""), 3)
    own = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    lora = meta("sdxl_control_lora")
    for k, v in lora.items():
        if k.endswith((".up", ".down")):
            assert k.rsplit(".", 1)[0] + ".weight" in own, k
        elif k != "lora_controlnet":
            assert own[k] == tuple(v.shape), k


@pytest.mark.parametrize("family,prefix", [("sd1", None), ("sd1", ""), ("sd2", "control_model."), ("sdxl", "")])
def test_controlnets_of_each_family_load(tmp_path, family, prefix):
    path = write(str(tmp_path / f"cn_{family}.safetensors"), tiny_controlnet(family, prefix=prefix))
    cn = load_controlnet(path)
    assert isinstance(cn, ControlNet) and not cn.global_average_pooling
    cfg = cn.control_model.config
    assert cfg.context_dim == CTX[family]
    assert bool(cfg.adm_in_channels) == (family == "sdxl")
    assert cfg.use_linear_in_transformer == (family != "sd1")


def test_pickled_controlnet_loads_and_matches_safetensors(tmp_path):
    sd = tiny_controlnet("sd1")
    a = load_controlnet(write(str(tmp_path / "a.safetensors"), sd))
    b = load_controlnet(write(str(tmp_path / "b.pth"), sd))
    for (ka, va), (kb, vb) in zip(a.control_model.state_dict().items(), b.control_model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_not_a_controlnet_is_a_clear_error(tmp_path):
    path = write(str(tmp_path / "vae.safetensors"), {"encoder.down.0.block.0.conv1.weight": torch.zeros(4, 4, 3, 3)})
    with pytest.raises(ModelFileError, match="vae.safetensors: not a ControlNet, Control-LoRA or T2I-Adapter"):
        load_controlnet(path)
    broken = tiny_controlnet("sd1")
    del broken["control_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"]
    with pytest.raises(ModelFileError, match="missing.*input_blocks.4.1.transformer_blocks.0.attn1.to_q"):
        load_controlnet_state_dict(broken)
    del broken["control_model.input_blocks.4.1.proj_in.weight"]
    with pytest.raises(ModelFileError, match="input_blocks.4.1.proj_in.weight.*missing"):
        load_controlnet_state_dict(broken)


# -- residuals reach the UNet ----------------------------------------------------------------

def test_strength_scales_the_residuals_and_zero_changes_nothing(models):
    model = models("sd1")
    cn = load_controlnet_state_dict(tiny_controlnet("sd1"))
    x, sigma, c = x_latent(), sigma_at(model), conds("sd1")
    one = ready(cn.copy(), model, strength=1.0).get_control(x, sigma, c, 1)
    assert len(one["output"]) == 12 and len(one["middle"]) == 1 and one["input"] == []
    assert [r.shape[1] for r in one["output"]] == [32] * 4 + [64] * 3 + [128] * 5
    s = ready(cn.copy(), model, strength=2.5).get_control(x, sigma, c, 1)
    for a, b in zip(one["output"] + one["middle"], s["output"] + s["middle"]):
        torch.testing.assert_close(b, a * 2.5)

    plain = run_unet(model, x, sigma, c)
    zero = ready(cn.copy(), model, strength=0.0).get_control(x, sigma, c, 1)
    assert torch.equal(run_unet(model, x, sigma, c, zero), plain)
    controlled = run_unet(model, x, sigma, c, ready(cn.copy(), model).get_control(x, sigma, c, 1))
    assert (controlled - plain).abs().max() > 1e-3


def test_residuals_are_added_where_the_unet_expects_them(models, caplog):
    """A control that is all zero except at one block changes the output exactly as adding
    that tensor to that skip does."""
    model = models("sd1")
    cn = load_controlnet_state_dict(tiny_controlnet("sd1"))
    x, sigma, c = x_latent(), sigma_at(model), conds("sd1")
    full = ready(cn.copy(), model).get_control(x, sigma, c, 1)
    with caplog.at_level(logging.WARNING):
        run_unet(model, x, sigma, c, {k: list(v) for k, v in full.items()})
    assert "could not be applied" not in caplog.text
    only = {"input": [], "middle": [torch.zeros_like(full["middle"][0])],
            "output": [torch.zeros_like(r) for r in full["output"]]}
    only["output"][4] = full["output"][4]
    a = run_unet(model, x, sigma, c, only)
    assert (a - run_unet(model, x, sigma, c)).abs().max() > 0


def test_chained_controlnets_add_up(models):
    model = models("sd1")
    a_net = load_controlnet_state_dict(tiny_controlnet("sd1", seed=3))
    b_net = load_controlnet_state_dict(tiny_controlnet("sd1", seed=8))
    x, sigma, c = x_latent(), sigma_at(model), conds("sd1")
    a = ready(a_net.copy(), model, strength=0.7)
    b = b_net.copy().set_cond_hint(hint_image(seed=9), 1.3).set_previous_controlnet(a)
    b.pre_run(model, model.model_sampling.percent_to_sigma)
    chained = b.get_control(x, sigma, c, 1)
    ra = ready(a_net.copy(), model, strength=0.7).get_control(x, sigma, c, 1)
    rb = ready(b_net.copy(), model, hint_image(seed=9), 1.3).get_control(x, sigma, c, 1)
    for key in ("output", "middle"):
        for got, p, q in zip(chained[key], ra[key], rb[key]):
            torch.testing.assert_close(got, p + q)
    b.cleanup()
    assert a.timestep_range is None and a.model_sampling_current is None and b.cond_hint is None


def test_timestep_range_is_in_sigmas(models):
    model = models("sd1")
    cn = ready(load_controlnet_state_dict(tiny_controlnet("sd1")).copy(), model, percent=(0.2, 0.6))
    ms = model.model_sampling
    assert cn.timestep_range == (ms.percent_to_sigma(0.2), ms.percent_to_sigma(0.6))
    x, c = x_latent(), conds("sd1")
    assert cn.get_control(x, sigma_at(model, 0.1), c, 1) is None
    assert cn.get_control(x, sigma_at(model, 0.4), c, 1) is not None
    assert cn.get_control(x, sigma_at(model, 0.8), c, 1) is None
    # outside its range a chained control passes the earlier one's residuals through
    late = load_controlnet_state_dict(tiny_controlnet("sd1", seed=8)).copy().set_cond_hint(hint_image(), 1.0, (0.9, 1.0))
    late.set_previous_controlnet(cn)
    late.pre_run(model, ms.percent_to_sigma)
    passed = late.get_control(x, sigma_at(model, 0.4), c, 1)
    alone = cn.get_control(x, sigma_at(model, 0.4), c, 1)
    for p, q in zip(passed["output"], alone["output"]):
        assert torch.equal(p, q)


def test_hint_is_resized_to_the_latent_and_broadcast(models):
    model = models("sd1")
    hint = hint_image(1, 50, 30)
    cn = ready(load_controlnet_state_dict(tiny_controlnet("sd1")).copy(), model, hint)
    x, sigma = x_latent(1, 16, 12), sigma_at(model)
    cn.get_control(x, sigma, conds("sd1"), 1)
    assert torch.equal(cn.cond_hint, common_upscale(hint, 96, 128, "nearest-exact", "center"))
    cn.get_control(x_latent(1, 8, 8), sigma, conds("sd1"), 1)  # another size: resized again
    assert cn.cond_hint.shape[-2:] == (64, 64)

    h = torch.arange(3.0).view(3, 1, 1, 1)
    assert broadcast_hint(h[:1], 4, 2).shape[0] == 1
    assert broadcast_hint(h[:2], 4, 2).flatten().tolist() == [0, 1, 0, 1]
    assert broadcast_hint(h, 6, 2).flatten().tolist() == [0, 1, 2, 0, 1, 2]
    assert broadcast_hint(h[:2], 6, 2).flatten().tolist() == [0, 1, 0, 0, 1, 0]


def test_batched_cond_and_uncond_match_separate_calls(models):
    model = models("sd1")
    cn = ready(load_controlnet_state_dict(tiny_controlnet("sd1")).copy(), model, hint_image(2))
    x, sigma = x_latent(4), sigma_at(model).repeat(4)
    c = conds("sd1", 4)
    both = cn.get_control(x, sigma, c, 2)
    first = ready(load_controlnet_state_dict(tiny_controlnet("sd1")).copy(), model, hint_image(2))
    part = first.get_control(x[:2], sigma[:2], {"c_crossattn": c["c_crossattn"][:2]}, 1)
    torch.testing.assert_close(both["output"][5][:2], part["output"][5], atol=1e-5, rtol=1e-5)


def test_sdxl_controlnet_needs_the_adm_vector(models):
    model = models("sdxl")
    cn = ready(load_controlnet_state_dict(tiny_controlnet("sdxl", prefix="")).copy(), model)
    x, sigma, c = x_latent(), sigma_at(model), conds("sdxl")
    out = cn.get_control(x, sigma, c, 1)
    assert len(out["output"]) == 9
    assert (run_unet(model, x, sigma, c, out) - run_unet(model, x, sigma, c)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="ADM vector"):
        cn.get_control(x, sigma, {"c_crossattn": c["c_crossattn"]}, 1)


def test_shuffle_files_pool_globally(tmp_path, models):
    model = models("sd1")
    path = write(str(tmp_path / "control_v11e_sd15_shuffle.safetensors"), tiny_controlnet("sd1"))
    cn = load_controlnet(path)
    assert cn.global_average_pooling
    out = ready(cn.copy(), model).get_control(x_latent(), sigma_at(model), conds("sd1"), 1)
    for r in out["output"]:
        torch.testing.assert_close(r, r.mean(dim=(2, 3), keepdim=True).expand_as(r))
    assert load_controlnet(write(str(tmp_path / "x_shuffle_fp16.pth"), tiny_controlnet("sd1"))).global_average_pooling


# -- difference ControlNets ------------------------------------------------------------------

def test_difference_controlnet_adds_the_base_weights():
    base = tiny_checkpoint("sd1", seed=1, dtype=torch.float32)
    model = build_diffusion_model(base)
    full = tiny_controlnet("sd1", dtype=torch.float32)
    diff = {}
    for k, v in full.items():
        unet_key = "model.diffusion_model." + k[len("control_model."):]
        diff[k] = v - base[unet_key] if unet_key in base else v
    diff["difference"] = torch.zeros(0)
    patcher = ModelPatcher(model)
    got = load_controlnet_state_dict(dict(diff), model=patcher)
    want = load_controlnet_state_dict(full)
    for (k, a), b in zip(got.control_model.state_dict().items(), want.control_model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=k)
    without = load_controlnet_state_dict(dict(diff))  # no model: loads the deltas as they are, with a warning
    assert not torch.equal(without.control_model.input_blocks[1][0].in_layers[2].weight,
                           want.control_model.input_blocks[1][0].in_layers[2].weight)


# -- Control-LoRA ----------------------------------------------------------------------------

def _merged_control_lora(lora: dict, base: dict) -> dict:
    """The full ControlNet a Control-LoRA stands for: base weights + up @ down, the rest from the file."""
    sd = {}
    for k, v in lora.items():
        if k == "lora_controlnet" or k.endswith(".down"):
            continue
        if k.endswith(".up"):
            stem = k[:-3]
            w = base["model.diffusion_model." + stem + ".weight"].float()
            delta = v.float().flatten(1) @ lora[stem + ".down"].float().flatten(1)
            sd[stem + ".weight"] = w + delta.reshape(w.shape)
        else:
            sd[k] = v.float()
    return sd


def test_control_lora_is_the_base_encoder_plus_low_rank_deltas(models):
    base_sd = tiny_checkpoint("sdxl", seed=1)
    model = models("sdxl")
    lora = tiny_control_lora()
    cl = load_controlnet_state_dict(dict(lora))
    assert isinstance(cl, ControlLora) and cl.control_model is None
    merged = load_controlnet_state_dict(_merged_control_lora(lora, base_sd))
    x, sigma, c = x_latent(), sigma_at(model), conds("sdxl")
    a = ready(cl.copy(), model)
    got = a.get_control(x, sigma, c, 1)
    want = ready(merged.copy(), model).get_control(x, sigma, c, 1)
    for p, q in zip(got["output"] + got["middle"], want["output"] + want["middle"]):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4)
    # the network shares the base UNet's weights rather than copying them
    unet_w = model.diffusion_model.input_blocks[1][0].in_layers[2].weight
    assert a.control_model.input_blocks[1][0].in_layers[2].weight.data_ptr() == unet_w.data_ptr()
    a.cleanup()
    assert a.control_model is None
    assert (run_unet(model, x, sigma, c, got) - run_unet(model, x, sigma, c)).abs().max() > 1e-3


def test_control_lora_on_the_wrong_model_is_a_clear_error(models):
    model = models("sd1")
    cl = load_controlnet_state_dict(tiny_control_lora()).copy().set_cond_hint(hint_image(), 1.0)
    with pytest.raises(ValueError, match="Control-LoRA does not fit the model"):
        cl.pre_run(model, model.model_sampling.percent_to_sigma)


# -- T2I-Adapters ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind,family,blocks", [("full", "sd1", {2, 5, 8, 11}), ("light", "sd1", {2, 5, 8, 11}),
                                                ("xl", "sdxl", {3, 5, 8})])
def test_t2i_adapters_feed_the_input_blocks(models, caplog, kind, family, blocks):
    model = models(family)
    ad = load_controlnet_state_dict(tiny_t2i_adapter(kind))
    assert isinstance(ad, T2IAdapter)
    assert ad.channels_in == (1 if kind == "full" else 3)
    x, sigma, c = x_latent(), sigma_at(model), conds(family)
    out = ready(ad.copy(), model, strength=0.5).get_control(x, sigma, c, 1)
    fed = {i for i, r in enumerate(reversed(out["input"])) if r is not None}
    assert fed == blocks
    assert (len(out["middle"]) == 1) == (kind == "xl")
    with caplog.at_level(logging.WARNING):
        controlled = run_unet(model, x, sigma, c, out)
    assert "could not be applied" not in caplog.text
    assert (controlled - run_unet(model, x, sigma, c)).abs().max() > 1e-3
    again = ready(ad.copy(), model, strength=1.0).get_control(x, sigma, c, 1)
    for p, q in zip(out["input"], again["input"]):
        if p is not None:
            torch.testing.assert_close(q * 0.5, p)


def test_diffusers_t2i_adapter_is_renamed(models):
    sd = tiny_t2i_adapter("xl")
    a = load_controlnet_state_dict(sd)
    b = load_controlnet_state_dict(to_diffusers_t2i(sd))
    for (ka, va), (kb, vb) in zip(a.t2i_model.state_dict().items(), b.t2i_model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("family,res,depth,middle", [("sd1", [2, 2, 2, 2], [1, 1, 1, 1, 1, 1, 0, 0], 1),
                                                     ("sdxl", [2, 2, 2], [0, 0, 2, 2, 10, 10], 10)])
def test_diffusers_controlnet_is_renamed(family, res, depth, middle):
    from tiny_controlnets import to_diffusers_controlnet
    sd = tiny_controlnet(family, prefix="")
    want = load_controlnet_state_dict(sd)
    got = load_controlnet_state_dict(to_diffusers_controlnet(sd, res, depth, middle))
    a, b = got.control_model.state_dict(), want.control_model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_control_lora_through_the_sampler(models):
    """KSampler pipeline: pre_run builds the Control-LoRA on the base UNet, cleanup drops it,
    and the UNet's own weights are untouched."""
    from models.sampling import ksampler
    model = models("sdxl")
    before = {k: v.clone() for k, v in model.diffusion_model.state_dict().items()}
    patcher = ModelPatcher(model)
    pooled = torch.randn(1, CLIP_G_WIDTH, generator=torch.Generator().manual_seed(4))

    def cond(control=None, seed=0):
        g = torch.Generator().manual_seed(seed)
        opts = {"pooled_output": pooled, "width": 128, "height": 128}
        if control is not None:
            opts.update(control=control, control_apply_to_uncond=True)
        return [[torch.randn(1, 77, CTX["sdxl"], generator=g), opts]]
    cl = load_controlnet_state_dict(tiny_control_lora()).copy().set_cond_hint(hint_image(), 0.9)
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    latent = torch.zeros(1, 4, 16, 16)
    run = lambda pos: ksampler.sample(patcher, noise, 2, 5.0, "euler", "normal", pos, cond(seed=1), latent, seed=1)
    plain = run(cond())
    controlled = run(cond(cl))
    assert cl.control_model is None and cl.timestep_range is None
    assert (controlled - plain).abs().max() > 1e-3
    assert all(torch.equal(v, before[k]) for k, v in model.diffusion_model.state_dict().items())
    assert torch.equal(run(cond(cl)), controlled)  # rebuilt the same way on the next run


def test_union_controlnet_uses_the_chosen_type(models):
    from nodes.controlnet_extras import SetUnionControlNetType
    from tiny_controlnets import tiny_union_controlnet
    model = models("sdxl")
    cn = load_controlnet_state_dict(tiny_union_controlnet())
    assert cn.control_model.num_control_types == 8
    x, sigma, c = x_latent(), sigma_at(model), conds("sdxl")

    def residuals(type_name):
        typed = SetUnionControlNetType.execute(cn, type_name).result[0] if type_name else cn
        return ready(typed.copy(), model).get_control(x, sigma, c, 1)["output"][3]
    auto, depth, canny = residuals("auto"), residuals("depth"), residuals("canny/lineart/anime_lineart/mlsd")
    assert torch.equal(residuals(None), auto)  # no type set = "auto"
    assert (depth - auto).abs().max() > 1e-4 and (depth - canny).abs().max() > 1e-4
    assert cn.extra_args == {}  # the node works on a copy
