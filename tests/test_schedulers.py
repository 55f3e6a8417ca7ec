"""Schedulers and the model's sigma table against ComfyUI 0.8.0's own values (oracle)."""
import os

import pytest
import torch
from safetensors.torch import load_file

from models.sampling import schedulers
from tiny_checkpoints import ORACLE_DIR
from models.sampling.model_sampling import DiscreteSchedule

ORACLE = os.path.join(ORACLE_DIR, "components")


@pytest.fixture(scope="module")
def ref():
    path = os.path.join(ORACLE, "sd15", "sampling.safetensors")
    if not os.path.exists(path):
        pytest.skip("oracle components not available")
    return load_file(path)


@pytest.fixture(scope="module")
def ms():
    return DiscreteSchedule()


def test_sigma_table(ref, ms):
    assert torch.equal(ms.sigmas, ref["model_sampling.sigmas"])
    assert torch.equal(ms.log_sigmas, ref["model_sampling.log_sigmas"])
    assert abs(float(ms.sigma_min) - 0.0292) < 1e-4 and abs(float(ms.sigma_max) - 14.6146) < 1e-3


@pytest.mark.parametrize("name", schedulers.SCHEDULER_NAMES)
def test_scheduler_matches_comfyui(ref, ms, name):
    got = schedulers.calculate_sigmas(ms, name, 10)
    want = ref[f"sigmas.{name}"]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("key", [
    "ksampler.euler.normal.10.d1", "ksampler.uni_pc.sgm_uniform.10.d1", "ksampler.dpm_2.karras.10.d1",
    "ksampler.euler.normal.5.d0.6", "ksampler.ddim.ddim_uniform.5.d1", "ksampler.heun.karras.3.d1",
    "ksampler.dpmpp_2m_sde.exponential.4.d1", "ksampler.euler.normal.4.d1"])
def test_ksampler_sigmas(ref, ms, key):
    _, sampler, scheduler, steps, denoise = key.split(".", 4)
    got = schedulers.ksampler_sigmas(ms, scheduler, sampler, int(steps), float(denoise[1:]))
    torch.testing.assert_close(got, ref[key], rtol=1e-6, atol=1e-7)


def test_formulas_from_their_definitions(ms):
    """Formulas checked independently of the oracle: endpoints and monotonicity."""
    n, lo, hi = 8, 0.03, 14.6
    k = schedulers.karras(n, lo, hi)
    assert len(k) == n + 1 and k[-1] == 0
    torch.testing.assert_close(k[0], torch.tensor(hi)); torch.testing.assert_close(k[n - 1], torch.tensor(lo))
    e = schedulers.exponential(n, lo, hi)
    ratios = e[1:n] / e[:n - 1]
    torch.testing.assert_close(ratios, ratios[0].expand_as(ratios))  # geometric
    kl = schedulers.kl_optimal(n, lo, hi)
    torch.testing.assert_close(torch.atan(kl[:n]), torch.linspace(float(torch.atan(torch.tensor(hi))),
                                                                   float(torch.atan(torch.tensor(lo))), n))
    for name in schedulers.SCHEDULER_NAMES:
        s = schedulers.calculate_sigmas(ms, name, 7)
        assert s[-1] == 0 and torch.all(s[:-1] > 0) and torch.all(s[1:] <= s[:-1]), name


def test_denoise_zero_and_advanced_window(ms):
    assert len(schedulers.ksampler_sigmas(ms, "normal", "euler", 10, 0.0)) == 0
    full = schedulers.ksampler_sigmas(ms, "normal", "euler", 10, 1.0)
    base = schedulers.advanced_sigmas(full, 0, 6, force_full_denoise=False)
    assert len(base) == 7 and base[-1] == full[6] and base[-1] > 0
    forced = schedulers.advanced_sigmas(full, 0, 6, force_full_denoise=True)
    assert forced[-1] == 0
    refiner = schedulers.advanced_sigmas(full, 6, 10000, force_full_denoise=False)
    assert torch.equal(refiner, full[6:])
    assert schedulers.advanced_sigmas(full, 10, 10000, False) is None


def test_timestep_roundtrip(ms):
    t = torch.tensor([0.0, 10.0, 500.0, 999.0])
    assert torch.equal(ms.timestep(ms.sigma(t)), t.long())
    lcm = DiscreteSchedule(prediction="lcm", distilled_steps=50)
    assert len(lcm.sigmas) == 50
    assert int(lcm.timestep(lcm.sigma_max)) == 999 and int(lcm.timestep(lcm.sigma_min)) == 19


def test_initial_noise_matches_comfyui(ref):
    from models.sampling.noise import initial_noise
    latent = torch.zeros([2, 4, 32, 32])
    assert torch.equal(initial_noise(latent, 42), ref["noise.seed42.batch_index_none"])
    assert torch.equal(initial_noise(latent, 42, [3, 5]), ref["noise.seed42.batch_index_3_5"])


def test_batch_index_regenerates_one_item():
    from models.sampling.noise import initial_noise
    latent = torch.zeros([4, 4, 8, 8])
    full = initial_noise(latent, 7, [0, 1, 2, 3])
    assert torch.equal(initial_noise(latent[:1], 7, [2])[0], full[2])
    assert torch.equal(initial_noise(latent, 7), full)


def test_brownian_noise_reproducible_and_unit_variance():
    from models.sampling.noise import BrownianTreeNoise
    x = torch.zeros([1, 4, 16, 16])
    a = BrownianTreeNoise(x, 0.03, 14.6, seed=5)
    b = BrownianTreeNoise(x, 0.03, 14.6, seed=5)
    n1 = a(torch.tensor(14.6), torch.tensor(7.0))
    assert torch.equal(n1, b(torch.tensor(14.6), torch.tensor(7.0)))
    assert 0.8 < float(n1.std()) < 1.2
    other = BrownianTreeNoise(x, 0.03, 14.6, seed=6)(torch.tensor(14.6), torch.tensor(7.0))
    assert not torch.equal(n1, other)
