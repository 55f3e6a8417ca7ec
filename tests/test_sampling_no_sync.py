"""No host-device syncs inside the sampling loop, checked on the CPU.

`DeviceTensor` is a CPU tensor that plays the part of a CUDA tensor: everything that would
make the host wait for the GPU raises once the loop has started (the first model call):
reading a value (`item`, `bool`, `float`, `int`, `tolist`, `numpy`), copying to the host
(`cpu`, `to("cpu")`), ops whose output size depends on the data (`nonzero`, boolean
indexing, `masked_select`, `unique`), and blocking host-to-device copies. It also catches
what would fail on a real GPU: a host tensor with dimensions mixed into a device op (only
0-dim host tensors ride along as scalars). The latent, the sigmas handed to the sampler
and every model output are DeviceTensors, as they are on CUDA; a DeviceTensor reports the
device "cpu:0", and a factory call or `.to` with that device makes one (a host-to-device
transfer, which must not block).

Every sampler of KSampler (and the custom-sampling extras) runs a few steps on the
analytic Gaussian denoiser of test_samplers_analytic, and must give exactly the numbers
it gives on plain tensors.
"""
import contextlib

import pytest
import torch

from models.sampling import schedulers
from models.sampling.model_sampling import DiscreteSchedule
from models.sampling.samplers import SAMPLER_NAMES, get_sampler
from models.sampling.samplers_advanced import sample_euler_pp, sample_lcm_upscale

from tests import test_samplers_analytic as analytic


# Samplers whose step-size control needs a value from the GPU: the adaptive controller
# accepts or rejects each step from the error norm of the latent (one sync per step).
NEEDS_SYNC = {"dpm_adaptive": "PID step-size control reads the error norm of each step"}


class HostSync(AssertionError):
    pass


_armed = {"on": False}
Tensor = torch.Tensor

_READS = {Tensor.item, Tensor.__bool__, Tensor.__float__, Tensor.__int__, Tensor.__index__, Tensor.tolist,
          Tensor.numpy, Tensor.cpu, Tensor.nonzero, torch.nonzero, Tensor.masked_select, torch.masked_select,
          Tensor.unique, torch.unique, torch.argwhere, Tensor.argwhere, torch.is_nonzero, Tensor.is_nonzero,
          Tensor.__repr__, Tensor.__format__}
_SAFE = {Tensor.__getitem__, Tensor.copy_, Tensor.to, Tensor.new_empty, Tensor.__setitem__}


def _tensors(obj):
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


FAKE = torch.device("cpu", 0)  # what a DeviceTensor reports as its device
_FACTORIES = {torch.randn, torch.rand, torch.randint, torch.zeros, torch.ones, torch.empty, torch.full,
              torch.arange, torch.linspace, torch.logspace, torch.tensor, torch.as_tensor, torch.eye,
              torch.randperm, torch.normal}


def _device_arg(args, kwargs):
    for a in list(args[1:]) + list(kwargs.values()):
        if isinstance(a, (str, torch.device)):
            try:
                return torch.device(a)
            except RuntimeError:
                continue
    return None


def _to_host(args, kwargs) -> bool:
    d = _device_arg(args, kwargs)
    return d is not None and d.type == "cpu" and d.index is None


class DeviceTensor(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__self__", None) is Tensor.device:  # the `device` property
            return FAKE
        if _armed["on"]:
            with torch._C.DisableTorchFunctionSubclass():  # inspecting tensors must not re-enter
                _check_call(func, args, kwargs)
        out = super().__torch_function__(func, types, args, kwargs)
        if func is Tensor.cpu or (func is Tensor.to and _to_host(args, kwargs)):
            return _plain(out)
        return out


class FakeDeviceMode(torch.overrides.TorchFunctionMode):
    """Tensors made on (or moved to) the fake device become DeviceTensors."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _FACTORIES and kwargs.get("device") is not None and torch.device(kwargs["device"]) == FAKE:
            kwargs["device"] = "cpu"
            return func(*args, **kwargs).as_subclass(DeviceTensor)
        if func is Tensor.to and isinstance(args[0], Tensor) and not isinstance(args[0], DeviceTensor) \
                and _device_arg(args, kwargs) == FAKE:
            if _armed["on"] and not kwargs.get("non_blocking", False):
                raise HostSync("host-device sync in the sampling loop: blocking host-to-device copy")
            kwargs.pop("device", None)
            rest = [a for a in args[1:] if not isinstance(a, (str, torch.device))]
            return func(args[0], *rest, **kwargs).as_subclass(DeviceTensor)
        return func(*args, **kwargs)


def _check_call(func, args, kwargs):
    name = getattr(func, "__name__", repr(func))
    if func in _READS or (func is Tensor.to and _to_host(args, kwargs)):
        raise HostSync(f"host-device sync in the sampling loop: {name}")
    if func is Tensor.__getitem__ and any(t.dtype == torch.bool for t in _tensors(args[1:])):
        raise HostSync("host-device sync in the sampling loop: boolean indexing")
    if func is Tensor.copy_ and isinstance(args[0], DeviceTensor) and not isinstance(args[1], DeviceTensor) \
            and not kwargs.get("non_blocking", False):
        raise HostSync("host-device sync in the sampling loop: blocking host-to-device copy")
    if func in _SAFE:
        return
    ts = list(_tensors(args)) + list(_tensors(kwargs))
    if any(isinstance(t, DeviceTensor) for t in ts):
        for t in ts:
            if not isinstance(t, DeviceTensor) and t.ndim > 0:  # fails on a real GPU
                raise HostSync(f"host tensor {tuple(t.shape)} mixed into device op {name}")


def _plain(t):
    return t.as_subclass(torch.Tensor) if isinstance(t, Tensor) else t


class GaussianDenoiser(analytic.GaussianDenoiser):
    """The ideal denoiser for N(MU, S^2) data; arms the sync check on its first call."""

    def __call__(self, x, sigma, **kwargs):
        _armed["on"] = True
        assert isinstance(x, DeviceTensor) is isinstance(sigma, DeviceTensor), "sigma not on x's device"
        return super().__call__(x, sigma, **kwargs)


@pytest.fixture(autouse=True)
def _disarm():
    torch.set_num_threads(1)
    _armed["on"] = False
    yield
    _armed["on"] = False


def _run(sampler, device: bool, steps=6, **options):
    ms = DiscreteSchedule()
    sigmas = schedulers.karras(steps, float(ms.sigma_min), float(ms.sigma_max))
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    torch.manual_seed(0)  # samplers that draw from the global generator draw the same
    seen = []
    callback = lambda d: seen.append(d["i"])  # noqa: E731
    if not device:
        return sampler(GaussianDenoiser(), x, sigmas, extra_args={"seed": 7}, callback=callback, **options), seen
    x, sigmas = x.as_subclass(DeviceTensor), sigmas.as_subclass(DeviceTensor)
    try:
        with FakeDeviceMode():
            out = sampler(GaussianDenoiser(), x, sigmas, extra_args={"seed": 7}, callback=callback, **options)
    finally:
        _armed["on"] = False
    return out, seen


def _check(sampler, **options):
    out, steps = _run(sampler, True, **options)
    assert isinstance(out, DeviceTensor), "the result left the device"
    assert steps, "the callback never ran"
    ref, _ = _run(sampler, False, **options)
    assert torch.equal(_plain(out), ref), "device-typed run differs from the plain one"


@pytest.mark.parametrize("name", [n for n in SAMPLER_NAMES if n not in NEEDS_SYNC])
def test_sampler_loop_has_no_host_sync(name):
    _check(get_sampler(name))


@pytest.mark.parametrize("name", sorted(NEEDS_SYNC))
def test_listed_exceptions_do_sync(name):
    """Keeps the exception list honest: a sampler listed here really needs the sync."""
    with pytest.raises(HostSync):
        _run(get_sampler(name), True)


@pytest.mark.parametrize("sampler, options", [(sample_euler_pp, {}),
                                              (sample_lcm_upscale, {"upscale_method": "bilinear"})],
                         ids=["euler_pp", "lcm_upscale"])
def test_custom_sampling_extras_have_no_host_sync(sampler, options):
    # (lcm_upscale's default bislerp resize does boolean indexing in models/resize.py: a sync)
    _check(sampler, **options)


def test_the_check_catches_a_sync():
    def syncing(model, x, sigmas, extra_args=None, callback=None):
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]))
            callback({"i": i})
            if sigmas[i + 1] == 0:  # device sigmas: a sync per step
                return denoised
            x = denoised
        return x

    with pytest.raises(HostSync):
        _run(syncing, True)


class _Guider:
    """What KSamplerObject.sample drives: the denoiser behind CFG, here the analytic one."""

    def __init__(self):
        self.inner_model = GaussianDenoiser()

    def __call__(self, x, sigma, model_options=None, seed=None):
        return self.inner_model(x, sigma, model_options=model_options or {})


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m", "dpmpp_3m_sde_gpu", "ddim"])
def test_ksampler_object_with_inpaint_mask_has_no_host_sync(name):
    """The KSampler wrapper around the sampler (noise scaling, inpainting re-noise of the kept
    area each step, step callback) adds no sync of its own."""
    from models.sampling.ksampler import sampler_object

    def run(device):
        ms = DiscreteSchedule()
        sigmas = schedulers.karras(5, float(ms.sigma_min), float(ms.sigma_max))
        g = torch.Generator().manual_seed(0)
        noise, latent = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
        mask = (torch.arange(64).view(1, 1, 8, 8) % 3 == 0).float().expand(1, 4, 8, 8)
        seen = []
        if device:
            noise, latent, mask, sigmas = (t.as_subclass(DeviceTensor) for t in (noise, latent, mask, sigmas))
        try:
            with FakeDeviceMode() if device else contextlib.nullcontext():
                out = sampler_object(name).sample(_Guider(), sigmas, {"model_options": {}, "seed": 3},
                                                  lambda i, d, x, total: seen.append(i), noise, latent, mask)
        finally:
            _armed["on"] = False
        assert seen == list(range(len(sigmas) - 1))
        return out

    out = run(True)
    assert isinstance(out, DeviceTensor)
    assert torch.equal(_plain(out), run(False))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", [n for n in SAMPLER_NAMES if n not in NEEDS_SYNC])
def test_cuda_sampling_loop_has_no_sync(name):
    """The same on a real GPU: torch's sync debug mode turns every synchronising call into an
    error from the first model call on (setting up before the loop may sync)."""

    class Armed(GaussianDenoiser):
        def __call__(self, x, sigma, **kwargs):
            torch.cuda.set_sync_debug_mode("error")
            return super().__call__(x, sigma, **kwargs)

    ms = DiscreteSchedule()
    sigmas = schedulers.karras(6, float(ms.sigma_min), float(ms.sigma_max)).cuda()
    x = torch.randn(2, 4, 8, 8, device="cuda") * sigmas[0]
    try:
        get_sampler(name)(Armed(), x, sigmas, extra_args={"seed": 7}, callback=lambda d: None)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _conditioned_entry(**extra):
    from models.sampling.conds import CondCrossAttn
    return {"model_conds": {"c_crossattn": CondCrossAttn(torch.ones(1, 3, 4))}, **extra}


@pytest.mark.parametrize("window", [{}, {"timestep_start": 999999999.9, "timestep_end": 0.0}])
def test_full_timestep_range_and_controlnet_range_need_no_sync(window):
    """A conditioning (or ControlNet) active from 0% to 100% is used without comparing sigma:
    no sync; a narrower window has to compare (ComfyUI does the same each step)."""
    from models.controlnet import ControlBase
    from models.sampling.guidance import area_and_mult
    x = torch.randn(1, 4, 8, 8).as_subclass(DeviceTensor)
    sigma = torch.full((1,), 3.0).as_subclass(DeviceTensor)
    _armed["on"] = True
    try:
        assert area_and_mult(_conditioned_entry(**window), x, sigma) is not None
        control = ControlBase.__new__(ControlBase)
        control.previous_controlnet, control.timestep_range = None, (999999999.9, 0.0)
        assert control._previous_and_active(x, sigma, {}, 1, {})[1] is True
        with pytest.raises(HostSync):
            area_and_mult(_conditioned_entry(timestep_start=5.0, timestep_end=1.0), x, sigma)
    finally:
        _armed["on"] = False
    assert area_and_mult(_conditioned_entry(timestep_start=2.0), x, sigma) is None  # 3.0 is above 2.0
