"""comfy_extras.nodes_latent over HTTP: latent files in, latent arithmetic, saved latents out,
each checked against the formula computed here independently; /object_info entries."""
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from nodes import latent_ops as LO
from wsclient import run_prompt


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def write_latent(base_dir, name, tensor):
    save_file({"latent_tensor": tensor.contiguous(), "latent_format_version_0": torch.tensor([])},
              str(base_dir / "input" / name))


async def run_graph(client, base_dir, nodes: dict, out_link):
    """nodes: id -> (class_type, inputs); the latent at out_link is saved and returned."""
    prompt = {k: {"class_type": c, "inputs": i} for k, (c, i) in nodes.items()}
    prompt["save"] = {"class_type": "SaveLatent", "inputs": {"samples": list(out_link), "filename_prefix": "ops"}}
    resp, events, history = await run_prompt(client, prompt)
    assert "prompt_id" in resp, resp
    assert history["status"]["status_str"] == "success", [e for e in events if e[0] == "execution_error"]
    entry = history["outputs"]["save"]["latents"][0]
    return load_file(str(base_dir / "output" / entry["subfolder"] / entry["filename"]))["latent_tensor"]


def load(name):
    return ("LoadLatent", {"latent": name})


async def test_add_subtract_multiply_with_resize(client, base_dir):
    a, b = rand(2, 4, 8, 8, seed=1), rand(1, 4, 4, 4, seed=2)
    write_latent(base_dir, "a.latent", a)
    write_latent(base_dir, "b.latent", b)
    # b is smaller: bilinear to 8x8 (same aspect, no crop) and repeated over a's batch
    b_fit = F.interpolate(b, size=(8, 8), mode="bilinear").repeat(2, 1, 1, 1)
    added = await run_graph(client, base_dir, {"a": load("a.latent"), "b": load("b.latent"),
                                               "op": ("LatentAdd", {"samples1": ["a", 0], "samples2": ["b", 0]})},
                            ("op", 0))
    torch.testing.assert_close(added, a + b_fit)
    sub = await run_graph(client, base_dir, {"a": load("a.latent"), "b": load("b.latent"),
                                             "op": ("LatentSubtract", {"samples1": ["a", 0], "samples2": ["b", 0]})},
                          ("op", 0))
    torch.testing.assert_close(sub, a - b_fit)
    mul = await run_graph(client, base_dir, {"a": load("a.latent"),
                                             "op": ("LatentMultiply", {"samples": ["a", 0], "multiplier": -2.5})},
                          ("op", 0))
    torch.testing.assert_close(mul, a * -2.5)


def interpolate_per_pixel(a, b, ratio):
    """The norm-preserving blend, one channel vector at a time."""
    out = torch.empty_like(a)
    for n in range(a.shape[0]):
        for y in range(a.shape[2]):
            for x in range(a.shape[3]):
                va, vb = a[n, :, y, x].double(), b[n, :, y, x].double()
                la, lb = va.norm(), vb.norm()
                da = va / la if la > 0 else torch.zeros_like(va)
                db = vb / lb if lb > 0 else torch.zeros_like(vb)
                mixed = da * ratio + db * (1 - ratio)
                d = mixed / mixed.norm() if mixed.norm() > 0 else torch.zeros_like(mixed)
                out[n, :, y, x] = (d * (la * ratio + lb * (1 - ratio))).float()
    return out


async def test_interpolate_keeps_blended_norms(client, base_dir):
    a, b = rand(1, 4, 4, 4, seed=3), rand(1, 4, 4, 4, seed=4) * 3
    a[0, :, 0, 0] = 0  # a zero vector contributes no direction
    write_latent(base_dir, "a.latent", a)
    write_latent(base_dir, "b.latent", b)
    out = await run_graph(client, base_dir, {"a": load("a.latent"), "b": load("b.latent"),
                                             "op": ("LatentInterpolate", {"samples1": ["a", 0], "samples2": ["b", 0],
                                                                          "ratio": 0.3})}, ("op", 0))
    torch.testing.assert_close(out, interpolate_per_pixel(a, b, 0.3), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.norm(dim=1), a.norm(dim=1) * 0.3 + b.norm(dim=1) * 0.7, rtol=1e-5, atol=1e-5)
    (ends,) = LO.LatentInterpolate.execute({"samples": a}, {"samples": b}, 1.0).args
    torch.testing.assert_close(ends["samples"][:, :, 1:], a[:, :, 1:], rtol=1e-5, atol=1e-6)


async def test_concat_cut_and_batch(client, base_dir):
    a, b = rand(2, 4, 4, 6, seed=5), rand(1, 4, 4, 3, seed=6)
    write_latent(base_dir, "a.latent", a)
    write_latent(base_dir, "b.latent", b)
    graph = {"a": load("a.latent"), "b": load("b.latent"),
             "cat": ("LatentConcat", {"samples1": ["a", 0], "samples2": ["b", 0], "dim": "-x"}),
             "cut": ("LatentCut", {"samples": ["cat", 0], "dim": "x", "index": -4, "amount": 2})}
    cat = await run_graph(client, base_dir, graph, ("cat", 0))
    assert cat.shape == (2, 4, 4, 9)
    torch.testing.assert_close(cat[:, :, :, :3], b.repeat(2, 1, 1, 1))
    torch.testing.assert_close(cat[:, :, :, 3:], a)
    cut = await run_graph(client, base_dir, graph, ("cut", 0))
    torch.testing.assert_close(cut, cat[:, :, :, 5:7])
    # LatentCut clamps: index past the end keeps the last column, amount past the end is shortened
    (last,) = LO.LatentCut.execute({"samples": a}, "y", 100, 5).args
    torch.testing.assert_close(last["samples"], a[:, :, 3:4])
    batched = await run_graph(client, base_dir, {"a": load("a.latent"), "b": load("b.latent"),
                                                 "op": ("LatentBatch", {"samples1": ["a", 0], "samples2": ["b", 0]})},
                              ("op", 0))
    assert batched.shape == (3, 4, 4, 6)
    # 4x3 into 4x6: centre-cropped to the 1.5 aspect (rows 1..2), then bilinear
    torch.testing.assert_close(batched[2:], F.interpolate(b[:, :, 1:3], size=(4, 6), mode="bilinear"))


def test_batch_index_bookkeeping():
    a, b = {"samples": rand(2, 4, 4, 4)}, {"samples": rand(3, 4, 4, 4), "batch_index": [7, 8, 9]}
    (out,) = LO.LatentBatch.execute(a, b).args
    assert out["batch_index"] == [0, 1, 7, 8, 9]
    (fixed,) = LO.LatentBatchSeedBehavior.execute(b, "fixed").args
    assert fixed["batch_index"] == [7, 7, 7]
    (rnd,) = LO.LatentBatchSeedBehavior.execute(b, "random").args
    assert "batch_index" not in rnd and b["batch_index"] == [7, 8, 9]


def test_cut_to_batch_and_video_frames():
    video = rand(1, 4, 5, 2, 2)
    (cut,) = LO.LatentCutToBatch.execute({"samples": video}, "t", 2).args
    assert cut["samples"].shape == (2, 4, 2, 2, 2)  # the fifth frame does not fill a slice
    torch.testing.assert_close(cut["samples"][1], video[0, :, 2:4])
    image = {"samples": rand(1, 4, 4, 4)}
    assert LO.LatentCutToBatch.execute(image, "t", 2).args[0] is image  # no t axis on a 4-D latent
    src = {"samples": torch.ones(1, 4, 2, 2, 2)}
    (rep,) = LO.ReplaceVideoLatentFrames.execute({"samples": video}, -2, src).args
    assert torch.equal(rep["samples"][:, :, 3:], src["samples"]) and torch.equal(rep["samples"][:, :, :3], video[:, :, :3])


async def test_operations_tonemap_and_sharpen(client, base_dir):
    a = rand(1, 4, 8, 8, seed=7) * 4
    write_latent(base_dir, "a.latent", a)
    out = await run_graph(client, base_dir, {
        "a": load("a.latent"), "tm": ("LatentOperationTonemapReinhard", {"multiplier": 1.0}),
        "op": ("LatentApplyOperation", {"samples": ["a", 0], "operation": ["tm", 0]})}, ("op", 0))
    mag = a.norm(dim=1, keepdim=True)
    white = mag.mean() + 5 * mag.std()
    expected_mag = (mag / white) / (mag / white + 1) * white
    torch.testing.assert_close(out.norm(dim=1, keepdim=True), expected_mag, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out / out.norm(dim=1, keepdim=True), a / mag, rtol=1e-4, atol=1e-5)

    # sharpen with alpha 0 is the identity; with alpha > 0 the magnitudes stay, directions change
    (op0,) = LO.LatentOperationSharpen.execute(2, 1.0, 0.0).args
    torch.testing.assert_close(op0(latent=a), a, rtol=1e-5, atol=1e-5)
    (op,) = LO.LatentOperationSharpen.execute(2, 1.0, 0.5).args
    sharp = op(latent=a)
    assert sharp.shape == a.shape and not torch.allclose(sharp, a)
    # kernel check at one interior pixel: sum over the 5x5 window of the normalised latent
    axis = torch.linspace(-1, 1, 5)
    g = torch.exp(-(axis[:, None] ** 2 + axis[None] ** 2) / 2)
    k = g / g.sum() * -5.0
    k[2, 2] += 1.0 - k.sum()
    n = a / (mag + 1e-6)
    manual = (n[0, :, 2:7, 2:7] * k).sum(dim=(1, 2)) * (mag[0, 0, 4, 4] + 1e-6)
    torch.testing.assert_close(sharp[0, :, 4, 4], manual, rtol=1e-4, atol=1e-5)


def test_apply_operation_cfg_acts_on_guidance_direction():
    class Patcher:
        def __init__(self):
            self.fns = []

        def clone(self):
            return self

        def set_model_sampler_pre_cfg_function(self, fn):
            self.fns.append(fn)

    (m,) = LO.LatentApplyOperationCFG.execute(Patcher(), lambda latent, **kw: latent * 2).args
    cond, uncond = rand(1, 4, 2, 2, seed=8), rand(1, 4, 2, 2, seed=9)
    out = m.fns[0]({"conds_out": [cond.clone(), uncond.clone()]})
    torch.testing.assert_close(out[0], (cond - uncond) * 2 + uncond)
    torch.testing.assert_close(out[1], uncond)


async def test_object_info_shapes(client):
    info = await (await client.get("/object_info")).json()
    interp = info["LatentInterpolate"]
    assert interp["python_module"] == "comfy_extras.nodes_latent" and interp["category"] == "latent/advanced"
    assert interp["input"]["required"]["ratio"] == ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}]
    assert interp["input"]["required"]["samples1"] == ["LATENT", {}]
    assert interp["output"] == ["LATENT"]
    assert info["LatentBatch"]["deprecated"] is True and info["LatentBatch"]["category"] == "latent/batch"
    assert info["LatentBatchSeedBehavior"]["input"]["required"]["seed_behavior"][1]["default"] == "fixed"
    assert info["LatentCut"]["input"]["required"]["index"][1]["min"] == -16384
    sharpen = info["LatentOperationSharpen"]
    assert sharpen["experimental"] is True and sharpen["output"] == ["LATENT_OPERATION"]
    assert info["LatentConcat"]["input"]["required"]["dim"][0] == "COMBO"
    assert info["LatentConcat"]["input"]["required"]["dim"][1]["options"] == ["x", "-x", "y", "-y", "t", "-t"]
    # packs import the class from ComfyUI's module name
    from comfy_extras.nodes_latent import LatentBatch
    assert LatentBatch is LO.LatentBatch
