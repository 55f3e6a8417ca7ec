"""Custom-sampling nodes reproduce KSampler when wired equivalently, and their schedules match
the scheduler formulas."""
import torch

from models.sampling import schedulers
from nodes import sampling, sampling_custom as sc, sampling_schedulers as ss
from test_ksampler_pipeline import FakePatcher, cond


def latent():
    return {"samples": torch.zeros(1, 4, 8, 8)}


def test_sampler_custom_advanced_equals_ksampler():
    p = FakePatcher()
    (ks,) = sampling.KSampler().sample(p, 7, 6, 3.0, "dpmpp_2m", "karras", cond(1.0), cond(0.0), latent(), 1.0)
    (sigmas,) = ss.BasicScheduler.execute(p, "karras", 6, 1.0).args
    (noise,) = sc.RandomNoise.execute(7).args
    (guider,) = sc.CFGGuider.execute(p, cond(1.0), cond(0.0), 3.0).args
    (sampler,) = sc.KSamplerSelect.execute("dpmpp_2m").args
    out, denoised = sc.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, latent()).args
    torch.testing.assert_close(out["samples"], ks["samples"])
    assert denoised["samples"].shape == out["samples"].shape
    custom, _ = sc.SamplerCustom.execute(p, True, 7, 3.0, cond(1.0), cond(0.0), sampler, sigmas, latent()).args
    torch.testing.assert_close(custom["samples"], ks["samples"])


def test_basic_guider_is_cfg_one_and_dual_cfg_reduces():
    p = FakePatcher()
    (sigmas,) = ss.KarrasScheduler.execute(5, 14.614642, 0.0291675, 7.0).args
    (sampler,) = sc.KSamplerSelect.execute("euler").args
    (noise,) = sc.RandomNoise.execute(3).args
    (basic,) = sc.BasicGuider.execute(p, cond(2.0)).args
    (cfg1,) = sc.CFGGuider.execute(p, cond(2.0), cond(0.5), 1.0).args
    a = sc.SamplerCustomAdvanced.execute(noise, basic, sampler, sigmas, latent()).args[0]["samples"]
    b = sc.SamplerCustomAdvanced.execute(noise, cfg1, sampler, sigmas, latent()).args[0]["samples"]
    torch.testing.assert_close(a, b)
    # DualCFG with cfg_conds = 1: cond1 and cond2 equal means plain CFG of cond2 against negative
    (dual,) = sc.DualCFGGuider.execute(p, cond(2.0), cond(2.0), cond(0.5), 1.0, 3.0, "regular").args
    (cfg3,) = sc.CFGGuider.execute(p, cond(2.0), cond(0.5), 3.0).args
    c = sc.SamplerCustomAdvanced.execute(noise, dual, sampler, sigmas, latent()).args[0]["samples"]
    d = sc.SamplerCustomAdvanced.execute(noise, cfg3, sampler, sigmas, latent()).args[0]["samples"]
    torch.testing.assert_close(c, d, rtol=1e-5, atol=1e-4)


def test_disable_noise_and_sampler_options():
    p = FakePatcher()
    (sigmas,) = ss.BasicScheduler.execute(p, "normal", 4, 1.0).args
    (noise,) = sc.DisableNoise.execute().args
    assert not noise.generate_noise(latent()).any()
    (anc,) = sc.SamplerEulerAncestral.execute(0.0, 1.0).args  # eta 0: deterministic
    (guider,) = sc.BasicGuider.execute(p, cond(1.0)).args
    out1 = sc.SamplerCustomAdvanced.execute(sc.RandomNoise.execute(1).args[0], guider, anc, sigmas, latent()).args[0]
    (euler,) = sc.KSamplerSelect.execute("euler").args
    out2 = sc.SamplerCustomAdvanced.execute(sc.RandomNoise.execute(1).args[0], guider, euler, sigmas, latent()).args[0]
    torch.testing.assert_close(out1["samples"], out2["samples"])
    (sde,) = sc.SamplerDPMPP_3M_SDE.execute(1.0, 1.0, "cpu").args
    assert sde.function is not None and sde.extra_options == {"eta": 1.0, "s_noise": 1.0}


def test_schedule_nodes():
    p = FakePatcher()
    ms = p.model.model_sampling
    (basic,) = ss.BasicScheduler.execute(p, "simple", 10, 0.5).args
    torch.testing.assert_close(basic, schedulers.calculate_sigmas(ms, "simple", 20)[-11:])
    assert len(ss.BasicScheduler.execute(p, "simple", 10, 0.0).args[0]) == 0
    (turbo,) = ss.SDTurboScheduler.execute(p, 2, 1.0).args
    torch.testing.assert_close(turbo, torch.cat([ms.sigma(torch.tensor([999, 899])), torch.zeros(1)]))
    (ays,) = ss.AlignYourStepsScheduler.execute("SD1", 10, 1.0).args
    assert len(ays) == 11 and float(ays[0]) == 14.614641189575195 and float(ays[-1]) == 0
    (ays5,) = ss.AlignYourStepsScheduler.execute("SDXL", 5, 1.0).args
    assert len(ays5) == 6 and torch.all(ays5[:-1][1:] < ays5[:-1][:-1])
    hi, lo = ss.SplitSigmas.execute(basic, 4).args
    assert torch.equal(hi, basic[:5]) and torch.equal(lo, basic[4:])
    hi, lo = ss.SplitSigmasDenoise.execute(basic, 0.3).args
    assert len(lo) == 4 and len(hi) == 8  # 10 steps * 0.3 = 3 low steps; high keeps the rest
    (flipped,) = ss.FlipSigmas.execute(basic.clone()).args
    assert abs(float(flipped[0]) - 0.0001) < 1e-9 and float(flipped[-1]) == float(basic[0])
    (first,) = ss.SetFirstSigma.execute(basic, 20.0).args
    assert float(first[0]) == 20.0 and float(basic[0]) != 20.0


async def test_custom_sampling_nodes_in_object_info(client):
    info = (await (await client.get("/object_info/SamplerCustomAdvanced")).json())["SamplerCustomAdvanced"]
    assert info["output_name"] == ["output", "denoised_output"]
    assert info["python_module"] == "comfy_extras.nodes_custom_sampler"
    ks = (await (await client.get("/object_info/KSamplerSelect")).json())["KSamplerSelect"]
    options = ks["input"]["required"]["sampler_name"]
    assert options[0] == "COMBO" and len(options[1]["options"]) == 44
