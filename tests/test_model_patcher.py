"""MODEL patching: clones share weights, object patches and sampler hooks stay per clone,
LoRA weight patches are applied for sampling and reverted when switching."""
import torch

from models.diffusion import DiffusionModel, sdxl_adm
from models.latent_formats import SD15
from models.lora.adapters import Adapter
from models.model_patcher import ModelPatcher
from models.sampling import ksampler
from models.sampling.model_sampling import DiscreteSchedule
from nodes.model_advanced import ModelSamplingDiscrete, RescaleCFG
from test_ksampler_pipeline import cond


class LinearUNet(torch.nn.Module):
    """eps = W x (per pixel over channels): a real nn.Module with a patchable weight."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(4, 4, 1, bias=False)
        torch.nn.init.eye_(self.proj.weight[:, :, 0, 0])
        self.proj.weight.data *= 0.5
        self.seen_t = []

    def forward(self, x, t, context=None, y=None, control=None, transformer_options=None):
        self.seen_t.append(t)
        shift = context.mean(dim=(1, 2)).view(-1, 1, 1, 1) if context is not None else 0
        return self.proj(x) + 0.1 * shift


def make():
    return ModelPatcher(DiffusionModel(LinearUNet(), "sd1", SD15()))


def run(patcher, sampler="euler", cfg=2.0):
    latent = torch.zeros(1, 4, 4, 4)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    return ksampler.sample(patcher, noise, 4, cfg, sampler, "normal", cond(1.0), cond(0.0), latent, seed=0)


def test_apply_model_parameterisation():
    m = DiffusionModel(LinearUNet(), "sd1", SD15())
    x = torch.randn(1, 4, 2, 2)
    sigma = torch.tensor([2.0])
    out = m.apply_model(x, sigma, c_crossattn=torch.zeros(1, 77, 8))
    xc = x / (sigma ** 2 + 1) ** 0.5
    torch.testing.assert_close(out, x - 0.5 * xc * 2.0)  # eps model: x - sigma * eps(c_in x), context 0
    assert int(m.diffusion_model.seen_t[-1]) == int(m.model_sampling.timestep(sigma))


def test_object_patch_only_affects_the_clone():
    base = make()
    (v,) = ModelSamplingDiscrete().patch(base, "v_prediction", False)
    assert v.get_model_object("model_sampling").prediction == "v_prediction"
    assert base.get_model_object("model_sampling").prediction == "eps"
    assert not torch.equal(run(v), run(base))
    (lcm,) = ModelSamplingDiscrete().patch(base, "lcm", False)
    assert len(lcm.get_model_object("model_sampling").sigmas) == 50


def test_rescale_cfg_hook_changes_guidance():
    base = make()
    (r,) = RescaleCFG().patch(base, 0.7)
    assert "sampler_cfg_function" in r.model_options and "sampler_cfg_function" not in base.model_options
    assert not torch.allclose(run(r, cfg=5.0), run(base, cfg=5.0))
    (r0,) = RescaleCFG().patch(base, 0.0)  # multiplier 0 is plain CFG
    torch.testing.assert_close(run(r0, cfg=5.0), run(base, cfg=5.0), rtol=1e-4, atol=1e-4)


def test_lora_patches_apply_for_sampling_and_revert():
    base = make()
    original = base.model.diffusion_model.proj.weight.detach().clone()
    lora = base.clone()
    up, down = torch.full((4, 1, 1, 1), 0.1), torch.ones(1, 4, 1, 1)
    lora.add_patches({"proj.weight": Adapter("lora", {"up": up, "down": down})}, 1.0)
    out_base = run(base)
    out_lora = run(lora)
    assert not torch.equal(out_base, out_lora)
    torch.testing.assert_close(base.model.diffusion_model.proj.weight, original + 0.1)  # still patched in place
    torch.testing.assert_close(run(base), out_base)  # base again: originals restored, same result
    torch.testing.assert_close(base.model.diffusion_model.proj.weight, original)


def test_sdxl_adm_layout():
    pooled = torch.ones(2, 1280)
    adm = sdxl_adm(pooled, 1024, 768, 0, 0, 1024, 768)
    assert adm.shape == (2, 2816) and torch.equal(adm[:, :1280], pooled)
    assert not torch.equal(adm[0, 1280:1536], adm[0, 1536:1792])  # height and width embeddings differ
