"""The UNet and VAE against ComfyUI 0.8.0's own outputs on the full-size random checkpoints
(../shared/oracle/components/README.md): per-block activations, the raw UNet output (eps),
apply_model's denoised estimate, the CFG combination, SDXL's ADM vector, VAE decode and
encode, each within the tolerances of components/tolerances.json.

Slow: the checkpoints are generated on first use (SD1.5 2.1 GB, SDXL 6.9 GB) into the cache
of tests/oracle_models.py. Run with `pytest -m slow tests/test_models_oracle.py -s` to see
the table of differences.
"""
import fnmatch
import json
import math
import os

import numpy as np
import pytest
import torch

from tests.oracle_models import COMPONENTS_DIR, require_oracle_model
from tests.tiny_checkpoints import ORACLE_DIR

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.isdir(COMPONENTS_DIR), reason="oracle components not available")]

CHECKPOINTS = {"sd15": "oracle_sd15_s1.safetensors", "sdxl": "oracle_sdxl_s2.safetensors"}
# SD1.5's UNet fits in RAM as fp32; SDXL keeps the file's fp16 weights and computes in fp32
# (per-layer upcast, bit-identical to fp32 weights).
WEIGHT_DTYPE = {"sd15": torch.float32, "sdxl": torch.float16}
RAM_NEEDED_GB = {"sd15": 5, "sdxl": 8}


def _tolerance(name: str) -> float:
    with open(os.path.join(COMPONENTS_DIR, "tolerances.json")) as f:
        table = json.load(f)["rel_rms"]
    for pattern, tol in table.items():
        if fnmatch.fnmatchcase(name, pattern):
            return tol
    raise KeyError(name)


def check(name: str, got: torch.Tensor, ref: torch.Tensor, arch: str):
    assert tuple(got.shape) == tuple(ref.shape), (name, got.shape, ref.shape)
    diff = got.double() - ref.double()
    rel = (diff.pow(2).mean().sqrt() / ref.double().pow(2).mean().sqrt()).item()
    tol = _tolerance(name)
    print(f"ORACLE {arch:5s} {name:28s} rel_rms {rel:.2e}  max_abs {diff.abs().max().item():.2e}  tol {tol:.0e}")
    assert rel <= tol, f"{name}: rel_rms {rel:.3e} > {tol:.0e}"


def _available_gb() -> float:
    import psutil
    return psutil.virtual_memory().available / 2 ** 30


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def oracle(request):
    arch = request.param
    if _available_gb() < RAM_NEEDED_GB[arch]:
        pytest.skip(f"{arch} oracle needs ~{RAM_NEEDED_GB[arch]} GB of free RAM")
    path = require_oracle_model(CHECKPOINTS[arch])
    from safetensors.torch import load_file

    from models.checkpoint import load_checkpoint
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    ck = load_checkpoint(path, weight_dtype=WEIGHT_DTYPE[arch], output_clip=False)
    refs = {part: load_file(os.path.join(COMPONENTS_DIR, arch, f"{part}.safetensors"))
            for part in ("unet", "unet_blocks", "vae", "text_encoder")}
    yield arch, ck, refs
    torch.set_num_threads(threads)
    del ck


def _y(refs, rows):
    return refs["unet"]["unet.y"][rows] if "unet.y" in refs["unet"] else None


def test_unet_blocks(oracle):
    arch, ck, refs = oracle
    blk = refs["unet_blocks"]
    model, unet = ck.model, ck.model.diffusion_model
    acts = {}

    def keep(name):
        return lambda module, args, out: acts.__setitem__(name, out)
    hooks = [unet.time_embed.register_forward_hook(keep("blk.emb_time"))]
    if hasattr(unet, "label_emb"):
        hooks.append(unet.label_emb.register_forward_hook(keep("blk.emb_label")))
    hooks += [b.register_forward_hook(keep(f"blk.input_blocks.{i:02d}")) for i, b in enumerate(unet.input_blocks)]
    hooks.append(unet.middle_block.register_forward_hook(keep("blk.middle_block")))
    hooks += [b.register_forward_hook(keep(f"blk.output_blocks.{i:02d}")) for i, b in enumerate(unet.output_blocks)]
    sigma = torch.full([1], 1.0)
    assert torch.equal(model.model_sampling.timestep(sigma).float(), blk["blk.timestep"].float())
    kw = {"y": _y(refs, slice(0, 1))} if arch == "sdxl" else {}
    with torch.inference_mode():
        denoised = model.apply_model(blk["blk.x"], sigma, c_crossattn=refs["unet"]["unet.context"][0:1], **kw)
    for h in hooks:
        h.remove()
    names = sorted(k for k in blk if k not in ("blk.x", "blk.timestep", "blk.denoised"))
    assert set(names) == set(acts)
    for name in names:
        check(name, acts[name], blk[name], arch)
    check("blk.denoised", denoised, blk["blk.denoised"], arch)


@pytest.mark.parametrize("i", [0, 1, 2])
def test_unet_eps_denoised_and_cfg(oracle, i):
    arch, ck, refs = oracle
    u = refs["unet"]
    model = ck.model
    x, sigma, context = u[f"unet.s{i}.x"], u[f"unet.s{i}.sigma"], u["unet.context"]
    timestep = model.model_sampling.timestep(sigma).float()
    assert torch.equal(timestep, u[f"unet.s{i}.timestep"].float())  # nearest table entry, exactly
    y = _y(refs, slice(0, 2))
    kw = {"y": y} if y is not None else {}
    with torch.inference_mode():
        c_in = 1.0 / torch.sqrt(sigma ** 2 + 1.0)
        eps = model.diffusion_model(x * c_in[:, None, None, None], timestep, context=context, **kw)
        check("unet.s*.eps", eps, u[f"unet.s{i}.eps"], arch)
        denoised = model.apply_model(x, sigma, c_crossattn=context, **kw)
        check("unet.s*.denoised", denoised, u[f"unet.s{i}.denoised"], arch)
        # CFG 7 on x[0:1]: uncond and cond evaluated in one batch, uncond first (as ComfyUI).
        x0 = x[0:1].repeat(2, 1, 1, 1)
        both = model.apply_model(x0, sigma, c_crossattn=context[[1, 0]], **({"y": y[[1, 0]]} if y is not None else {}))
        uncond, cond = both[0:1], both[1:2]
        check("unet.s*.cfg_denoised", uncond + 7.0 * (cond - uncond), u[f"unet.s{i}.cfg_denoised"], arch)


def test_sdxl_adm_vectors(oracle):
    arch, ck, refs = oracle
    if arch != "sdxl":
        pytest.skip("ADM is SDXL's")
    te, model = refs["text_encoder"], ck.model
    for key in ("p0_cat", "p1_empty"):  # plain CLIPTextEncode: sizes default to latent x 8 = 256
        adm = model.encode_adm(pooled_output=te[f"te.{key}.pooled_output"], width=256, height=256)
        check("adm.*", adm, te[f"adm.{key}_latent256"], arch)
    adm = model.encode_adm(pooled_output=te["te.sdxl_a.pooled_output"], width=1024, height=1024, crop_w=0, crop_h=0,
                           target_width=1024, target_height=1024)
    check("adm.*", adm, te["adm.sdxl_a"], arch)
    y = torch.cat([te["adm.p0_cat_latent256"], te["adm.p1_empty_latent256"]])
    check("unet.y", y, refs["unet"]["unet.y"], arch)


def test_vae_decode(oracle):
    arch, ck, refs = oracle
    v = refs["vae"]
    with torch.inference_mode():
        raw = ck.vae.first_stage_model.decode(v["vae.latent_in"])
        check("vae.decoder_raw", raw, v["vae.decoder_raw"], arch)
        check("vae.decoded_image", ck.vae.decode(v["vae.latent_in"]), v["vae.decoded_image"], arch)


def test_vae_encode(oracle):
    arch, ck, refs = oracle
    from PIL import Image
    v = refs["vae"]
    png = os.path.join(ORACLE_DIR, "refs", "inputs", "oracle_init_256.png")
    pixels = torch.from_numpy(np.array(Image.open(png).convert("RGB")).astype(np.float32) / 255.0)[None]
    assert torch.equal(pixels, v["vae.encode_pixels"])
    with torch.inference_mode():
        moments = ck.vae.first_stage_model.encode_moments(pixels.movedim(-1, 1) * 2.0 - 1.0)
        check("vae.encoder_moments", moments, v["vae.encoder_moments"], arch)
        check("vae.encoded_latent", ck.vae.encode(pixels), v["vae.encoded_latent"], arch)
    assert math.isfinite(moments.abs().max().item())
