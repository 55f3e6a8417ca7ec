"""How an SD-family model maps noise levels: the discrete schedule and the prediction type.

The table is ComfyUI's: betas linear in sqrt space (float64), alphas_cumprod, then
sigma_t = sqrt((1 - a_t) / a_t) stored as float32. The UNet is fed the integer
timestep nearest in log sigma; the scalings use the exact sigma.
"""
from __future__ import annotations

import math

import torch

EPS = "eps"
V_PREDICTION = "v_prediction"
X0 = "x0"
LCM = "lcm"
IMG_TO_IMG = "img_to_img"
PREDICTION_TYPES = (EPS, V_PREDICTION, LCM, X0, IMG_TO_IMG)


def beta_schedule(kind: str, n: int, linear_start: float, linear_end: float) -> torch.Tensor:
    if kind == "linear":
        return torch.linspace(linear_start ** 0.5, linear_end ** 0.5, n, dtype=torch.float64) ** 2
    if kind == "sqrt_linear":
        return torch.linspace(linear_start, linear_end, n, dtype=torch.float64)
    if kind == "sqrt":
        return torch.linspace(linear_start, linear_end, n, dtype=torch.float64) ** 0.5
    if kind == "cosine":
        s = 8e-3
        steps = torch.arange(n + 1, dtype=torch.float64) / n + s
        alphas = torch.cos(steps / (1 + s) * math.pi / 2) ** 2
        alphas = alphas / alphas[0]
        return torch.clamp(1 - alphas[1:] / alphas[:-1], 0, 0.999)
    raise ValueError(f"unknown beta schedule {kind!r}")


def rescale_zero_terminal_snr(sigmas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so the last step has (almost) zero SNR (Lin et al. 2023)."""
    a_sqrt = (1 / (sigmas * sigmas + 1)).sqrt()
    first, last = a_sqrt[0].clone(), a_sqrt[-1].clone()
    a_sqrt = (a_sqrt - last) * (first / (first - last))
    a_bar = a_sqrt ** 2
    a_bar[-1] = 4.8973451890853435e-08  # ComfyUI's floor, keeps sigma_max finite
    return ((1 - a_bar) / a_bar) ** 0.5


class DiscreteSchedule:
    """A 1000-step (by default) discrete noise schedule with a prediction type."""

    def __init__(self, prediction: str = EPS, beta_kind: str = "linear", linear_start: float = 0.00085,
                 linear_end: float = 0.012, timesteps: int = 1000, zsnr: bool = False,
                 distilled_steps: int | None = None):
        """`distilled_steps` (LCM: 50) keeps every (timesteps/distilled_steps)-th entry,
        counted from the top, and maps timesteps on that sparser grid."""
        if prediction not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction type {prediction!r}")
        self.prediction = prediction
        self.sigma_data = 1.0
        betas = beta_schedule(beta_kind, timesteps, linear_start, linear_end)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        if zsnr:
            sigmas = rescale_zero_terminal_snr(sigmas)
        self.zsnr = zsnr
        self.skip_steps = 1
        if distilled_steps is not None:
            self.skip_steps = timesteps // distilled_steps
            sigmas = sigmas[self.skip_steps - 1::self.skip_steps][-distilled_steps:].clone()
        self.set_sigmas(sigmas)

    def set_sigmas(self, sigmas: torch.Tensor) -> None:
        self.sigmas = sigmas.float()
        self.log_sigmas = sigmas.log().float()

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Index of the table entry nearest in log sigma."""
        dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        idx = dists.abs().argmin(dim=0).view(sigma.shape)
        if self.skip_steps > 1:
            idx = idx * self.skip_steps + (self.skip_steps - 1)
        return idx.to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Log-linear interpolation of the table at a (fractional) timestep."""
        t = timestep.float().to(self.log_sigmas.device)
        if self.skip_steps > 1:
            t = (t - (self.skip_steps - 1)) / self.skip_steps
        t = torch.clamp(t, min=0, max=len(self.sigmas) - 1)
        lo, hi, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi]).exp().to(timestep.device)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()

    # -- parameterisation -------------------------------------------------------
    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.prediction == IMG_TO_IMG:
            return x
        sigma = _expand(sigma, x.ndim)
        return x / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.prediction in (X0, IMG_TO_IMG):
            return model_output
        s = _expand(sigma, model_output.ndim)
        if self.prediction == V_PREDICTION:
            sd2 = self.sigma_data ** 2
            return x * sd2 / (s ** 2 + sd2) - model_output * s * self.sigma_data / (s ** 2 + sd2) ** 0.5
        denoised = x - model_output * s
        if self.prediction == LCM:
            return self._lcm_boundary(sigma, denoised, x)
        return denoised

    def _lcm_boundary(self, sigma, denoised, x):
        # LCM's consistency boundary condition, c_skip/c_out from the timestep (sigma_data 0.5, scale 10).
        t = self.timestep(sigma).float() * 10.0
        sd = 0.5
        c_skip = sd ** 2 / (t ** 2 + sd ** 2)
        c_out = t / (t ** 2 + sd ** 2) ** 0.5
        return _expand(c_out, x.ndim) * denoised + _expand(c_skip, x.ndim) * x

    def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor,
                      max_denoise: bool = False) -> torch.Tensor:
        sigma = _expand(sigma, noise.ndim)
        if max_denoise:
            noise = noise * torch.sqrt(1.0 + sigma ** 2.0)
        else:
            noise = noise * sigma
        return noise + latent

    def inverse_noise_scaling(self, sigma, latent):
        return latent


def _expand(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    if sigma.nelement() == 1:
        return sigma.view(())
    return sigma.view(sigma.shape[:1] + (1,) * (ndim - 1))


EDM = "edm"


class ContinuousEDMSchedule(DiscreteSchedule):
    """ComfyUI's ModelSamplingContinuousEDM: no discrete table behind the model, the UNet is fed
    0.25 * ln(sigma). `sigmas` (1000 log-spaced values from sigma_min to sigma_max) exists for
    the schedulers. Predictions: eps, v_prediction, or edm (Karras et al.'s preconditioning,
    v-like with the opposite sign, usually with sigma_data 0.5)."""

    def __init__(self, prediction: str = EPS, sigma_min: float = 0.002, sigma_max: float = 120.0,
                 sigma_data: float = 1.0):
        if prediction not in (EPS, V_PREDICTION, EDM):
            raise ValueError(f"unknown prediction type {prediction!r} for a continuous schedule")
        self.prediction = prediction
        self.zsnr, self.skip_steps = False, 1
        self.set_parameters(sigma_min, sigma_max, sigma_data)

    def set_parameters(self, sigma_min: float, sigma_max: float, sigma_data: float) -> None:
        self.sigma_data = sigma_data
        self.set_sigmas(torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000).exp())

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return 0.25 * sigma.log()

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return (timestep / 0.25).exp()

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return math.exp((hi - lo) * (1.0 - percent) + lo)

    def calculate_denoised(self, sigma, model_output, x):
        if self.prediction != EDM:
            return super().calculate_denoised(sigma, model_output, x)
        s = _expand(sigma, model_output.ndim)
        sd2 = self.sigma_data ** 2
        return x * sd2 / (s ** 2 + sd2) + model_output * s * self.sigma_data / (s ** 2 + sd2) ** 0.5


class ContinuousVSchedule(ContinuousEDMSchedule):
    """ComfyUI's ModelSamplingContinuousV: timestep = atan(sigma) * 2 / pi (in 0..1)."""

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma.atan() / math.pi * 2

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return (timestep * math.pi / 2).tan()
