"""The sampler table: every KSampler sampler name -> its function and fixed options."""
from __future__ import annotations

from models.sampling import samplers_ancestral as anc
from models.sampling import samplers_cfgpp as cfgpp
from models.sampling import samplers_dpm_solver as dpm_solver
from models.sampling import samplers_dpmpp as dpmpp
from models.sampling import samplers_exponential as expo
from models.sampling import samplers_multistep as multistep
from models.sampling import samplers_sa as sa
from models.sampling import samplers_unipc as unipc
from models.sampling import samplers_ode as ode

# name -> sampler function (see models/sampling/k_common.py for the signature)
SAMPLER_FUNCTIONS = {
    "euler": ode.sample_euler,
    "euler_ancestral": anc.sample_euler_ancestral,
    "heun": ode.sample_heun,
    "heunpp2": ode.sample_heunpp2,
    "dpm_2": ode.sample_dpm_2,
    "dpm_2_ancestral": anc.sample_dpm_2_ancestral,
    "lms": ode.sample_lms,
    "dpmpp_2s_ancestral": anc.sample_dpmpp_2s_ancestral,
    "dpmpp_sde": dpmpp.sample_dpmpp_sde,
    "dpmpp_sde_gpu": dpmpp.sample_dpmpp_sde_gpu,
    "dpmpp_2m": dpmpp.sample_dpmpp_2m,
    "dpmpp_2m_sde": dpmpp.sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": dpmpp.sample_dpmpp_2m_sde_gpu,
    "dpmpp_2m_sde_heun": dpmpp.sample_dpmpp_2m_sde_heun,
    "dpmpp_2m_sde_heun_gpu": dpmpp.sample_dpmpp_2m_sde_heun_gpu,
    "dpmpp_3m_sde": dpmpp.sample_dpmpp_3m_sde,
    "dpmpp_3m_sde_gpu": dpmpp.sample_dpmpp_3m_sde_gpu,
    "ddpm": anc.sample_ddpm,
    "lcm": anc.sample_lcm,
    "ipndm": multistep.sample_ipndm,
    "ipndm_v": multistep.sample_ipndm_v,
    "deis": multistep.sample_deis,
    "euler_cfg_pp": cfgpp.sample_euler_cfg_pp,
    "euler_ancestral_cfg_pp": cfgpp.sample_euler_ancestral_cfg_pp,
    "dpmpp_2s_ancestral_cfg_pp": cfgpp.sample_dpmpp_2s_ancestral_cfg_pp,
    "dpmpp_2m_cfg_pp": cfgpp.sample_dpmpp_2m_cfg_pp,
    "res_multistep": cfgpp.sample_res_multistep,
    "res_multistep_cfg_pp": cfgpp.sample_res_multistep_cfg_pp,
    "res_multistep_ancestral": cfgpp.sample_res_multistep_ancestral,
    "res_multistep_ancestral_cfg_pp": cfgpp.sample_res_multistep_ancestral_cfg_pp,
    "gradient_estimation": cfgpp.sample_gradient_estimation,
    "gradient_estimation_cfg_pp": cfgpp.sample_gradient_estimation_cfg_pp,
    "er_sde": expo.sample_er_sde,
    "seeds_2": expo.sample_seeds_2,
    "seeds_3": expo.sample_seeds_3,
    "exp_heun_2_x0": expo.sample_exp_heun_2_x0,
    "exp_heun_2_x0_sde": expo.sample_exp_heun_2_x0_sde,
    "sa_solver": sa.sample_sa_solver,
    "sa_solver_pece": sa.sample_sa_solver_pece,
    "dpm_fast": dpm_solver.sample_dpm_fast,
    "dpm_adaptive": dpm_solver.sample_dpm_adaptive,
    "uni_pc": unipc.sample_unipc,
    "uni_pc_bh2": unipc.sample_unipc_bh2,
}

# KSampler.SAMPLERS of ComfyUI 0.8.0, in its order (KSAMPLER_NAMES + ddim, uni_pc, uni_pc_bh2).
SAMPLER_NAMES = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "exp_heun_2_x0",
    "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm",
    "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
]


def get_sampler(name: str):
    if name == "ddim":  # ddim is euler; only its inpainting noise differs (handled by the caller)
        return SAMPLER_FUNCTIONS["euler"]
    if name not in SAMPLER_FUNCTIONS:
        raise ValueError(f"unknown sampler {name!r}")
    return SAMPLER_FUNCTIONS[name]
