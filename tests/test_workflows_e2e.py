"""The common sampling workflows end to end over HTTP on tiny checkpoints in the real layouts:
SDXL base -> refiner through KSamplerAdvanced, hires-fix, img2img, inpainting (VAEEncodeForInpaint
on a 9-channel model, SetLatentNoiseMask on a plain one), the custom-sampling chain against
KSampler, a LoRA on an fp16-stored checkpoint, and an interrupt in the middle of a KSampler.

Each test asserts a property ComfyUI's definitions give, not a stored number: a schedule split
in two runs as one, denoise d over n steps is the window [n/d - n, n/d) of the longer schedule,
latent cells outside the noise mask come back as the input latent, and so on.
"""
import asyncio
import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from models import folders
from tests.tiny_checkpoints import LAYOUT_DIR, write_tiny_checkpoint
from wsclient import run_prompt

pytestmark = pytest.mark.skipif(not os.path.isdir(LAYOUT_DIR), reason="oracle layouts not available")
SIZE = 64  # pixels; latents are 8x8


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """The tiny checkpoints, written once for the module."""
    d = tmp_path_factory.mktemp("tiny_checkpoints")
    for name, family, seed in (("sd1", "sd1", 3), ("sd1_inpaint", "sd1_inpaint", 5), ("sdxl", "sdxl", 4),
                               ("refiner", "sdxl_refiner", 6)):
        write_tiny_checkpoint(str(d / f"{name}.safetensors"), family, seed=seed)
    return d


@pytest.fixture
def models_dir(base_dir, tiny_files):
    m = base_dir / "models"
    (m / "checkpoints").mkdir(parents=True, exist_ok=True)
    for f in tiny_files.iterdir():
        (m / "checkpoints" / f.name).symlink_to(f)
    folders._list_cache.clear()
    return m


class Graph(dict):
    """An API-format prompt built node by node; add() returns the node's id."""

    def add(self, class_type, **inputs):
        node_id = str(len(self) + 1)
        self[node_id] = {"class_type": class_type, "inputs": inputs}
        return node_id

    def checkpoint(self, name):
        return self.add("CheckpointLoaderSimple", ckpt_name=name)

    def encode(self, ckpt, text):
        return self.add("CLIPTextEncode", text=text, clip=[ckpt, 1])

    def empty(self, size=SIZE):
        return self.add("EmptyLatentImage", width=size, height=size, batch_size=1)

    def ksampler(self, ckpt, pos, neg, latent, seed=7, steps=4, denoise=1.0, sampler="euler", model=None):
        return self.add("KSampler", model=model or [ckpt, 0], positive=[pos, 0], negative=[neg, 0],
                        latent_image=[latent, 0], seed=seed, steps=steps, cfg=6.0, sampler_name=sampler,
                        scheduler="normal", denoise=denoise)

    def advanced(self, model, pos, neg, latent, steps, start, end, add_noise=True, leftover=False, seed=7,
                 sampler="euler"):
        return self.add("KSamplerAdvanced", model=model, positive=[pos, 0], negative=[neg, 0],
                        latent_image=[latent, 0], add_noise="enable" if add_noise else "disable",
                        noise_seed=seed, steps=steps, cfg=6.0, sampler_name=sampler, scheduler="normal",
                        start_at_step=start, end_at_step=end,
                        return_with_leftover_noise="enable" if leftover else "disable")

    def save_latent(self, latent, prefix):
        return self.add("SaveLatent", samples=[latent, 0], filename_prefix=prefix)


async def run_ok(client, prompt, timeout=120):
    resp, events, history = await run_prompt(client, prompt, timeout=timeout)
    assert "prompt_id" in resp, resp
    assert history["status"]["status_str"] == "success", [d for t, d in events if t == "execution_error"]
    return history


def latent_of(base_dir, history, node_id):
    entry = history["outputs"][node_id]["latents"][0]
    return load_file(str(base_dir / "output" / entry["subfolder"] / entry["filename"]))["latent_tensor"]


def image_of(base_dir, history, node_id):
    entry = history["outputs"][node_id]["images"][0]
    return np.asarray(Image.open(base_dir / "output" / entry["subfolder"] / entry["filename"]))


async def upload_png(client, name, array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    import aiohttp
    form = aiohttp.FormData()
    form.add_field("image", buf.getvalue(), filename=name, content_type="image/png")
    form.add_field("overwrite", "true")
    resp = await client.post("/upload/image", data=form)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["name"]


def picture(alpha_left_half=False):
    """A smooth colour picture; with alpha 0 on the left half (LoadImage's mask is 1 - alpha)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    rgb = np.stack([x, y, 0.5 + 0.4 * np.sin(6 * x * y)], -1)
    img = (rgb * 255).round().astype(np.uint8)
    if alpha_left_half:
        alpha = np.full((SIZE, SIZE, 1), 255, np.uint8)
        alpha[:, : SIZE // 2] = 0
        img = np.concatenate([img, alpha], -1)
    return img


def rel_err(a, b):
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-12)).item()


# --------------------------------------------------------------------- SDXL base -> refiner
async def test_sdxl_base_to_refiner_handoff(client, models_dir, base_dir):
    g = Graph()
    base, refiner = g.checkpoint("sdxl.safetensors"), g.checkpoint("refiner.safetensors")
    sdxl_text = dict(width=1024, height=1024, crop_w=0, crop_h=0, target_width=1024, target_height=1024)
    pos = g.add("CLIPTextEncodeSDXL", clip=[base, 1], text_g="a lighthouse at dusk", text_l="a lighthouse", **sdxl_text)
    neg = g.add("CLIPTextEncodeSDXL", clip=[base, 1], text_g="blurry", text_l="blurry", **sdxl_text)
    rpos = g.add("CLIPTextEncodeSDXLRefiner", clip=[refiner, 1], ascore=6.0, width=1024, height=1024,
                 text="a lighthouse at dusk")
    rneg = g.add("CLIPTextEncodeSDXLRefiner", clip=[refiner, 1], ascore=2.5, width=1024, height=1024, text="blurry")
    empty = g.empty()
    steps, k = 6, 4
    # the usual hand-off: base for steps [0, k) keeping its leftover noise, refiner from k on
    first = g.advanced([base, 0], pos, neg, empty, steps, 0, k, leftover=True)
    refined = g.advanced([refiner, 0], rpos, rneg, first, steps, k, 10000, add_noise=False)
    # the same split with the base model in both halves, and the schedule in one piece
    second_base = g.advanced([base, 0], pos, neg, first, steps, k, 10000, add_noise=False)
    whole = g.advanced([base, 0], pos, neg, empty, steps, 0, 10000)
    # the base stopping at k without leftover noise (its last sigma forced to 0), and one step earlier
    stopped = g.advanced([base, 0], pos, neg, empty, steps, 0, k, leftover=False)
    before = g.advanced([base, 0], pos, neg, empty, steps, 0, k - 1, leftover=True)
    # a refiner start past the schedule's end has nothing to do
    past_end = g.advanced([refiner, 0], rpos, rneg, first, steps, steps, 10000, add_noise=False)
    saves = {name: g.save_latent(node, name) for name, node in
             (("first", first), ("refined", refined), ("second_base", second_base), ("whole", whole),
              ("stopped", stopped), ("before", before), ("past_end", past_end))}
    decoded = g.add("VAEDecode", samples=[refined, 0], vae=[refiner, 2])
    image = g.add("SaveImage", images=[decoded, 0], filename_prefix="refined")
    h = await run_ok(client, g)
    lat = {name: latent_of(base_dir, h, node) for name, node in saves.items()}

    assert all(t.shape == (1, 4, 8, 8) and torch.isfinite(t).all() for t in lat.values())
    # base [0,k) + base [k,end) without new noise is one run of the whole schedule (euler is
    # deterministic; only float rounding of the split may differ)
    assert rel_err(lat["second_base"], lat["whole"]) < 1e-5
    # leftover noise: from the same latent x at sigma_(k-1), euler's last step goes to sigma_k
    # with leftover noise and to 0 without, along the same direction d: first - x = c (stopped - x)
    # with c = 1 - sigma_k / sigma_(k-1) in (0, 1) for every element
    a, b = (lat["first"] - lat["before"]).flatten(), (lat["stopped"] - lat["before"]).flatten()
    c = (a @ b / (b @ b)).item()
    assert 0.05 < c < 0.95 and rel_err(a, c * b) < 1e-4
    assert rel_err(lat["refined"], lat["first"]) > 1e-3  # the refiner's steps changed the hand-off
    assert rel_err(lat["refined"], lat["second_base"]) > 1e-3  # and it is another model than the base
    assert torch.equal(lat["past_end"], lat["first"])
    assert image_of(base_dir, h, image).shape == (SIZE, SIZE, 3)

    # the refiner's aesthetic score reaches its ADM: another ascore, another result
    g[rpos]["inputs"]["ascore"] = 9.0
    h2 = await run_ok(client, g)
    assert torch.equal(latent_of(base_dir, h2, saves["first"]), lat["first"])
    assert not torch.equal(latent_of(base_dir, h2, saves["refined"]), lat["refined"])


# --------------------------------------------------------------------------------- hires fix
async def test_hires_fix_second_pass_is_the_tail_of_a_longer_schedule(client, models_dir, base_dir):
    g = Graph()
    ckpt = g.checkpoint("sd1.safetensors")
    pos, neg = g.encode(ckpt, "a castle on a hill"), g.encode(ckpt, "blurry")
    low = g.ksampler(ckpt, pos, neg, g.empty(), seed=11, steps=4)
    up = g.add("LatentUpscale", samples=[low, 0], upscale_method="nearest-exact", width=2 * SIZE,
               height=2 * SIZE, crop="disabled")
    hires = g.ksampler(ckpt, pos, neg, up, seed=12, steps=4, denoise=0.5)
    # ComfyUI's denoise: n steps at denoise d are the last n steps of an int(n/d)-step schedule
    tail = g.advanced([ckpt, 0], pos, neg, up, steps=8, start=4, end=10000, seed=12)
    decoded = g.add("VAEDecode", samples=[hires, 0], vae=[ckpt, 2])
    image = g.add("SaveImage", images=[decoded, 0], filename_prefix="hires")
    saves = {n: g.save_latent(node, n) for n, node in (("low", low), ("up", up), ("hires", hires), ("tail", tail))}
    h = await run_ok(client, g)
    lat = {n: latent_of(base_dir, h, node) for n, node in saves.items()}

    assert lat["low"].shape == (1, 4, 8, 8) and lat["hires"].shape == (1, 4, 16, 16)
    # nearest-exact x2: every low-resolution cell becomes a 2x2 block
    assert torch.equal(lat["up"], lat["low"].repeat_interleave(2, -1).repeat_interleave(2, -2))
    assert torch.equal(lat["hires"], lat["tail"])
    assert rel_err(lat["hires"], lat["up"]) > 1e-3  # the second pass did change the upscaled latent
    assert image_of(base_dir, h, image).shape == (2 * SIZE, 2 * SIZE, 3)


# ----------------------------------------------------------------------------------- img2img
async def test_img2img_denoise_window_and_zero_denoise(client, models_dir, base_dir):
    name = await upload_png(client, "photo.png", picture())
    g = Graph()
    ckpt = g.checkpoint("sd1.safetensors")
    pos, neg = g.encode(ckpt, "an oil painting"), g.encode(ckpt, "blurry")
    pixels = g.add("LoadImage", image=name)
    encoded = g.add("VAEEncode", pixels=[pixels, 0], vae=[ckpt, 2])
    out = g.ksampler(ckpt, pos, neg, encoded, seed=3, steps=5, denoise=0.6)
    window = g.advanced([ckpt, 0], pos, neg, encoded, steps=8, start=3, end=10000, seed=3)  # int(5/0.6)=8
    untouched = g.ksampler(ckpt, pos, neg, encoded, seed=3, steps=5, denoise=0.0)
    decoded = g.add("VAEDecode", samples=[out, 0], vae=[ckpt, 2])
    image = g.add("SaveImage", images=[decoded, 0], filename_prefix="i2i")
    saves = {n: g.save_latent(node, n) for n, node in
             (("encoded", encoded), ("out", out), ("window", window), ("untouched", untouched))}
    h = await run_ok(client, g)
    lat = {n: latent_of(base_dir, h, node) for n, node in saves.items()}
    assert lat["encoded"].shape == (1, 4, 8, 8)
    assert torch.equal(lat["out"], lat["window"])
    assert torch.equal(lat["untouched"], lat["encoded"])  # denoise 0: no sigmas, the input comes back
    assert rel_err(lat["out"], lat["encoded"]) > 1e-3
    assert image_of(base_dir, h, image).shape == (SIZE, SIZE, 3)
    # the same seed again: the same latent; another seed: another one
    g[out]["inputs"]["seed"] = 4
    h2 = await run_ok(client, g)
    assert torch.equal(latent_of(base_dir, h2, saves["window"]), lat["window"])
    assert not torch.equal(latent_of(base_dir, h2, saves["out"]), lat["out"])


# -------------------------------------------------------------------------------- inpainting
async def test_set_latent_noise_mask_keeps_unmasked_cells(client, models_dir, base_dir):
    """img2img at denoise 0.7 under a mask of the image's left half: cells outside the mask come
    back as the input latent (the denoiser's output is blended with it at every step)."""
    name = await upload_png(client, "masked.png", picture(alpha_left_half=True))
    g = Graph()
    ckpt = g.checkpoint("sd1.safetensors")
    pos, neg = g.encode(ckpt, "a red door"), g.encode(ckpt, "blurry")
    loaded = g.add("LoadImage", image=name)
    encoded = g.add("VAEEncode", pixels=[loaded, 0], vae=[ckpt, 2])
    masked = g.add("SetLatentNoiseMask", samples=[encoded, 0], mask=[loaded, 1])
    out = g.ksampler(ckpt, pos, neg, masked, seed=9, steps=6, denoise=0.7)
    plain = g.ksampler(ckpt, pos, neg, encoded, seed=9, steps=6, denoise=0.7)
    saves = {n: g.save_latent(node, n) for n, node in (("encoded", encoded), ("out", out), ("plain", plain))}
    h = await run_ok(client, g)
    lat = {n: latent_of(base_dir, h, node) for n, node in saves.items()}
    left, right = slice(0, SIZE // 16), slice(SIZE // 16, None)  # mask 1 on latent columns 0..3
    assert rel_err(lat["out"][..., right], lat["encoded"][..., right]) < 1e-4
    assert rel_err(lat["out"][..., left], lat["encoded"][..., left]) > 1e-2
    # the masked half is sampled as without a mask, up to what the kept half feeds back through the UNet
    assert not torch.equal(lat["out"], lat["plain"])
    assert rel_err(lat["plain"][..., right], lat["encoded"][..., right]) > 1e-2


async def test_vae_encode_for_inpaint_on_an_inpainting_model(client, models_dir, base_dir):
    name = await upload_png(client, "hole.png", picture(alpha_left_half=True))
    g = Graph()
    ckpt = g.checkpoint("sd1_inpaint.safetensors")
    pos, neg = g.encode(ckpt, "a window"), g.encode(ckpt, "blurry")
    loaded = g.add("LoadImage", image=name)
    encoded = g.add("VAEEncodeForInpaint", pixels=[loaded, 0], vae=[ckpt, 2], mask=[loaded, 1], grow_mask_by=6)
    out = g.ksampler(ckpt, pos, neg, encoded, seed=21, steps=5, denoise=1.0)
    decoded = g.add("VAEDecode", samples=[out, 0], vae=[ckpt, 2])
    image = g.add("SaveImage", images=[decoded, 0], filename_prefix="inpaint")
    saves = {n: g.save_latent(node, n) for n, node in (("encoded", encoded), ("out", out))}
    h = await run_ok(client, g)
    lat = {n: latent_of(base_dir, h, node) for n, node in saves.items()}
    assert lat["out"].shape == (1, 4, 8, 8) and torch.isfinite(lat["out"]).all()
    # mask: pixel columns 0..31, grown by 6 -> up to ~37; latent columns 5.. lie outside it
    keep = slice(5, None)
    assert rel_err(lat["out"][..., keep], lat["encoded"][..., keep]) < 1e-4
    assert rel_err(lat["out"][..., :4], lat["encoded"][..., :4]) > 1e-2
    assert image_of(base_dir, h, image).shape == (SIZE, SIZE, 3)

    # the 9-channel UNet reads the masked image latent and the mask: a wider mask (grow 16
    # reaches into latent column 5) changes even the cells both runs leave to the sampler
    g[encoded]["inputs"]["grow_mask_by"] = 16
    h2 = await run_ok(client, g)
    assert not torch.equal(latent_of(base_dir, h2, saves["out"])[..., :4], lat["out"][..., :4])


# ------------------------------------------------------------------------------ custom sampling
@pytest.mark.parametrize("sampler,scheduler", [("euler", "normal"), ("dpmpp_2m", "karras"),
                                               ("euler_ancestral", "simple")])
async def test_sampler_custom_advanced_equals_ksampler(client, models_dir, base_dir, sampler, scheduler):
    g = Graph()
    ckpt = g.checkpoint("sd1.safetensors")
    pos, neg = g.encode(ckpt, "a bowl of fruit"), g.encode(ckpt, "blurry")
    empty = g.empty()
    ks = g.add("KSampler", model=[ckpt, 0], positive=[pos, 0], negative=[neg, 0], latent_image=[empty, 0],
               seed=31, steps=5, cfg=5.5, sampler_name=sampler, scheduler=scheduler, denoise=1.0)
    noise = g.add("RandomNoise", noise_seed=31)
    guider = g.add("CFGGuider", model=[ckpt, 0], positive=[pos, 0], negative=[neg, 0], cfg=5.5)
    chosen = g.add("KSamplerSelect", sampler_name=sampler)
    sigmas = g.add("BasicScheduler", model=[ckpt, 0], scheduler=scheduler, steps=5, denoise=1.0)
    custom = g.add("SamplerCustomAdvanced", noise=[noise, 0], guider=[guider, 0], sampler=[chosen, 0],
                   sigmas=[sigmas, 0], latent_image=[empty, 0])
    saves = {n: g.save_latent(node, n) for n, node in (("ks", ks), ("custom", custom))}
    g.add("SaveLatent", samples=[custom, 1], filename_prefix="denoised")
    h = await run_ok(client, g)
    assert torch.equal(latent_of(base_dir, h, saves["ks"]), latent_of(base_dir, h, saves["custom"]))


# ------------------------------------------------------------------------- LoRA on fp16 storage
async def test_lora_on_fp16_stored_checkpoint_equals_its_fp32_copy(client, models_dir, base_dir):
    """comfyd keeps an fp16 file's UNet in fp16 and computes in fp32, as ComfyUI computes with the
    weights upcast; a LoRA patch must then land on fp32 weights too, not be rounded to fp16."""
    src = models_dir / "checkpoints" / "sd1.safetensors"
    sd = load_file(str(src))
    save_file({k: v.float() if v.is_floating_point() else v for k, v in sd.items()},
              str(models_dir / "checkpoints" / "sd1_fp32.safetensors"))
    lora, gen = {}, torch.Generator().manual_seed(0)
    for key in ("input_blocks.1.1.proj_in", "output_blocks.3.1.transformer_blocks.0.attn2.to_q"):
        w = sd[f"model.diffusion_model.{key}.weight"]
        name = "lora_unet_" + key.replace(".", "_")
        lora[name + ".lora_up.weight"] = (0.3 * torch.randn(w.shape[0], 4, generator=gen)).half()
        lora[name + ".lora_down.weight"] = (0.3 * torch.randn(4, *w.shape[1:], generator=gen)).half()
        lora[name + ".alpha"] = torch.tensor(4.0)
    (models_dir / "loras").mkdir(exist_ok=True)
    save_file(lora, str(models_dir / "loras" / "l.safetensors"))
    folders._list_cache.clear()

    async def run(ckpt_name, strength):
        g = Graph()
        ckpt = g.checkpoint(ckpt_name)
        patched = g.add("LoraLoaderModelOnly", model=[ckpt, 0], lora_name="l.safetensors", strength_model=strength)
        pos, neg = g.encode(ckpt, "a lantern"), g.encode(ckpt, "dark")
        out = g.ksampler(ckpt, pos, neg, g.empty(), seed=2, steps=3, model=[patched, 0])
        save = g.save_latent(out, ckpt_name)
        return latent_of(base_dir, await run_ok(client, g), save)

    fp16, fp32 = await run("sd1.safetensors", 0.77), await run("sd1_fp32.safetensors", 0.77)
    assert torch.equal(fp16, fp32)
    # and the fp16 weights come back unchanged: the unpatched runs agree too
    assert torch.equal(await run("sd1.safetensors", 0.0), await run("sd1_fp32.safetensors", 0.0))
    assert not torch.equal(fp16, await run("sd1.safetensors", 0.0))


# -------------------------------------------------------------------------------- interrupt
async def test_interrupt_in_the_middle_of_a_ksampler(client, models_dir, base_dir):
    g = Graph()
    ckpt = g.checkpoint("sd1.safetensors")
    pos, neg = g.encode(ckpt, "a long wait"), g.encode(ckpt, "blurry")
    steps = 400
    out = g.ksampler(ckpt, pos, neg, g.empty(), steps=steps)
    save = g.save_latent(out, "never")
    ws = await client.ws_connect("/ws?clientId=waiter")
    await ws.receive_json()
    resp = await client.post("/prompt", data=json.dumps({"prompt": g, "client_id": "waiter"}))
    prompt_id = (await resp.json())["prompt_id"]
    events, progress = [], []
    while True:
        m = json.loads((await asyncio.wait_for(ws.receive(), 120)).data)
        events.append(m["type"])
        if m["type"] == "progress" and m["data"]["node"] == out:
            progress.append(m["data"]["value"])
            if len(progress) == 3:
                assert (await client.post("/interrupt", data=json.dumps({"prompt_id": prompt_id}))).status == 200
        if m["type"] == "execution_interrupted":
            interrupted = m["data"]
            break
        assert m["type"] not in ("execution_success", "execution_error"), m
    await ws.close()
    assert interrupted["prompt_id"] == prompt_id and interrupted["node_id"] == out
    assert interrupted["node_type"] == "KSampler"
    assert progress[-1] < steps and progress == sorted(progress)  # stopped between steps, not at the end
    for _ in range(200):  # the history entry is recorded once the worker has wound down
        history = (await (await client.get(f"/history/{prompt_id}")).json()).get(prompt_id)
        if history:
            break
        await asyncio.sleep(0.05)
    assert history["status"]["status_str"] == "error" and history["outputs"] == {}
    assert history["status"]["messages"][-1][0] == "execution_interrupted"

    # the queue goes on: the next prompt (the same graph, few steps) runs to the end
    g[out]["inputs"]["steps"] = 2
    h = await run_ok(client, g)
    assert latent_of(base_dir, h, save).shape == (1, 4, 8, 8)
    queue = await (await client.get("/queue")).json()
    assert queue["queue_running"] == [] and queue["queue_pending"] == []
