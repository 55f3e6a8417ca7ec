"""Device selection and the dtype policy per model part (models/devices.py), with the facts
of ComfyUI 0.8.0's model_management: cards described by fake devices, flags as parsed from
the command line; fp16/bf16 correctness of the paths that run on the CPU."""
import pytest
import torch

from models import devices, memory
from models.devices import FakeDevice, VRAMState
from server import cli

H100 = dict(kind="cuda", capability=(9, 0), name="NVIDIA H100 80GB HBM3")
A100 = dict(kind="cuda", capability=(8, 0), name="NVIDIA A100-SXM4-80GB")
T4 = dict(kind="cuda", capability=(7, 5), name="Tesla T4")
GTX1660 = dict(kind="cuda", capability=(7, 5), name="NVIDIA GeForce GTX 1660 SUPER")
GTX1080 = dict(kind="cuda", capability=(6, 1), name="NVIDIA GeForce GTX 1080")
KEPLER = dict(kind="cuda", capability=(3, 7), name="Tesla K80")


@pytest.fixture(autouse=True)
def restore_runtime():
    yield
    devices.configure(cli.parse_args(["--cpu"]))
    memory.reset()


def card(*flags, **kw):
    dev = FakeDevice(80 * devices.GiB, **kw)
    devices.configure(cli.parse_args(list(flags)), device=dev)
    return dev


F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32


@pytest.mark.parametrize("spec, unet, vae", [
    (H100, F16, BF16), (A100, F16, BF16), (T4, F16, F32), (GTX1660, F32, F32), (GTX1080, F32, F32),
    (KEPLER, F32, F32)])
def test_default_dtypes_per_card(spec, unet, vae):
    dev = card(**spec)
    assert devices.precision("unet", F16, dev) == (unet, unet)
    assert devices.precision("unet", F32, dev) == (unet, unet)  # fp32 files are converted once, at load
    assert devices.precision("vae", F16, dev) == (vae, vae)  # never fp16: the SD VAE overflows there
    assert devices.precision("text_encoder", F16, dev) == (F16, F32)  # fp16 weights, fp32 compute


def test_cpu_keeps_half_files_half_and_computes_in_fp32():
    devices.configure(cli.parse_args(["--cpu"]))
    assert devices.compute_device().torch_device == torch.device("cpu")
    assert devices.settings().vram_state == VRAMState.DISABLED
    assert devices.precision("unet", F16) == (F16, F32)
    assert devices.precision("unet", BF16) == (BF16, F32)
    assert devices.precision("unet", F32) == (F32, F32)
    assert devices.precision("vae", F16) == (F16, F32)
    assert devices.precision("text_encoder", F32) == (F16, F32)
    # --force-fp16 does not reach the CPU (ComfyUI's should_use_fp16 answers False for it first)
    devices.configure(cli.parse_args(["--cpu", "--force-fp16"]))
    assert devices.precision("unet", F16) == (F16, F32)


@pytest.mark.parametrize("flags, spec, unet, vae, text", [
    (["--force-fp32"], H100, F32, F32, F16),
    (["--force-fp16"], GTX1080, F16, F32, F16),
    (["--bf16-unet"], T4, BF16, F32, F16),
    (["--fp16-unet"], GTX1660, F16, F32, F16),
    (["--fp32-unet"], H100, F32, BF16, F16),
    (["--fp16-vae"], H100, F16, F16, F16),
    (["--bf16-vae"], T4, F16, BF16, F16),
    (["--fp32-vae"], H100, F16, F32, F16),
    (["--fp32-text-enc"], H100, F16, BF16, F32),
    (["--bf16-text-enc"], H100, F16, BF16, BF16),
    (["--fp16-text-enc", "--force-fp32"], H100, F32, F32, F16),
])
def test_precision_flags(flags, spec, unet, vae, text):
    dev = card(*flags, **spec)
    assert devices.precision("unet", F16, dev)[1] == unet
    assert devices.precision("vae", F16, dev)[1] == vae
    assert devices.precision("text_encoder", F16, dev)[0] == text


def test_vram_flags_and_reserve():
    card(**H100)
    assert devices.settings().vram_state == VRAMState.NORMAL_VRAM
    card("--lowvram", **H100)
    assert devices.settings().vram_state == VRAMState.LOW_VRAM
    card("--novram", **H100)
    assert devices.settings().vram_state == VRAMState.NO_VRAM
    card("--highvram", **H100)
    assert devices.settings().vram_state == VRAMState.HIGH_VRAM
    assert devices.offload_device() == devices.compute_device().torch_device  # weights never leave
    card("--gpu-only", **H100)
    assert devices.settings().vram_state == VRAMState.HIGH_VRAM
    card("--reserve-vram", "1.5", **H100)
    assert devices.settings().reserved == int(1.5 * devices.GiB)
    assert devices.settings().minimum_inference_memory == int(0.8 * devices.GiB) + int(1.5 * devices.GiB)
    card(**H100)
    assert devices.settings().reserved == 400 * devices.MiB


def test_text_encoders_go_to_the_cpu_in_low_vram_modes():
    card(**H100)
    assert devices.text_encoder_device() == devices.compute_device().torch_device
    # a CUDA card under --lowvram: the text encoders run on the CPU (ComfyUI's rule)
    cuda = FakeDevice(80 * devices.GiB, **H100)
    cuda.torch_device = torch.device("cuda", 0)
    devices.configure(cli.parse_args(["--lowvram"]), device=cuda)
    assert devices.text_encoder_device() == torch.device("cpu")
    assert devices.vae_device() == torch.device("cuda", 0)
    devices.configure(cli.parse_args(["--cpu-vae"]), device=cuda)
    assert devices.vae_device() == torch.device("cpu")


def test_cuda_device_flags_set_visible_devices():
    env = {}
    devices.select_visible_devices(cli.parse_args(["--cuda-device", "2"]), env)
    assert env == {"CUDA_VISIBLE_DEVICES": "2"}
    env = {}
    devices.select_visible_devices(cli.parse_args(["--default-device", "1"]), env)
    assert env["CUDA_VISIBLE_DEVICES"].startswith("1,0,2,3,")
    env = {}
    devices.select_visible_devices(cli.parse_args([]), env)
    assert env == {}


def test_unsupported_device_flags_are_clear_errors(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["--directml"])
    assert "not supported" in capsys.readouterr().err


def test_compat_model_management_follows_the_policy():
    import comfy.model_management as mm
    card(**T4)
    assert mm.unet_dtype() == F16
    assert mm.vae_dtype(allowed_dtypes=[BF16, F32]) == F32  # no bf16 on Turing
    assert mm.should_use_fp16() and not mm.should_use_bf16()
    card(**H100)
    assert mm.vae_dtype(allowed_dtypes=[BF16, F32]) == BF16
    assert mm.unet_manual_cast(F16, devices.compute_device().torch_device) is None
    assert mm.text_encoder_dtype() == F16
    assert mm.minimum_inference_memory() == int(0.8 * devices.GiB) + 400 * devices.MiB
    assert mm.dtype_size(BF16) == 2 and mm.dtype_size(F32) == 4


# -- numbers: half-precision paths on the CPU -------------------------------------------------

def _tiny_vae(seed=0, scale=1.0):
    from models.vae import VAE, AutoencoderKL, VAEConfig
    torch.manual_seed(seed)
    model = AutoencoderKL(VAEConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, z_channels=4))  # f8
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.mul_(scale)
    return VAE(model.requires_grad_(False))


def test_vae_fp16_overflow_is_upcast():
    """A VAE whose activations overflow fp16 gives NaN/inf there; decode notices and redoes the
    work in fp32 (bf16 on cards that have it), giving the fp32 image."""
    devices.configure(cli.parse_args(["--cpu"]))
    vae = _tiny_vae(scale=60.0)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 4
    with torch.inference_mode():
        raw16 = vae.first_stage_model.decode(z.half())
    assert not torch.isfinite(raw16).all()  # the premise: fp16 overflows for this VAE
    reference = vae.decode(z)  # fp32
    vae.vae_dtype = F16
    out = vae.decode(z)
    assert vae.vae_dtype == F32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, reference)


def test_bf16_unet_matches_fp32_within_bf16_rounding(tmp_path):
    from tests.tiny_checkpoints import write_tiny_checkpoint
    from models.checkpoint import load_checkpoint
    path = write_tiny_checkpoint(str(tmp_path / "sd1.safetensors"), "sd1", seed=2)
    m32 = load_checkpoint(path, output_vae=False, output_clip=False).model
    mbf = load_checkpoint(path, compute_dtype=BF16, weight_dtype=BF16, output_vae=False, output_clip=False).model
    ctx_dim = next(m.in_features for n, m in m32.diffusion_model.named_modules() if n.endswith("attn2.to_k"))
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, ctx_dim, generator=g)
    sigma = torch.tensor([1.5, 0.7])
    with torch.inference_mode():
        a = m32.apply_model(x, sigma, c_crossattn=ctx)
        b = mbf.apply_model(x, sigma, c_crossattn=ctx)
    assert b.dtype == F32 and torch.isfinite(b).all()
    rel = ((a - b).norm() / a.norm()).item()
    assert rel < 3e-2, rel
