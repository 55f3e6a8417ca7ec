"""The per-call shortcuts of the UNet (models/unet.py, models/attention.py, models/ops.py) give
the numbers of the plain paths: cross-attention's fused k/v, the transformer block without
patches, the shared silu(emb) of the ResBlocks, the cached timestep frequencies, the layers'
cast check. And (slow) bench/unet_overhead.py: comfyd's UNet equals ComfyUI 0.8.0's on the
same weights with fewer kernels, module calls and Python calls per forward."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from models import attention, ops, unet
from models.attention import BasicTransformerBlock, CrossAttention
from models.unet import ResBlock, timestep_embedding
from tests.test_attention_speed import _init, fused_on_cpu, g  # noqa: F401 (fused_on_cpu: a fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cross_attention_fuses_k_and_v_of_the_context(fused_on_cpu):
    attn = _init(CrossAttention(32, context_dim=24, heads=2, dim_head=16))
    x, ctx = g(2, 9, 32, seed=1), g(2, 5, 24, seed=2)
    previous = attention.set_fused_qkv(set())
    try:
        plain = attn(x, context=ctx)
    finally:
        attention.set_fused_qkv(previous)
    fused = attn(x, context=ctx)
    k, v = attn.to_k.weight, attn.to_v.weight
    assert v.data_ptr() == k.data_ptr() + k.numel() * k.element_size()  # one [2*inner, ctx] tensor
    assert (fused - plain).abs().max() <= 1e-5 * plain.abs().max()
    # a separate value tensor is projected on its own
    other = g(2, 5, 24, seed=3)
    with_value = attn(x, context=ctx, value=other)
    previous = attention.set_fused_qkv(set())
    try:
        expected = attn(x, context=ctx, value=other)
    finally:
        attention.set_fused_qkv(previous)
    assert torch.equal(with_value, expected)


def test_block_without_patches_equals_the_patch_path():
    torch.set_num_threads(1)
    block = _init(BasicTransformerBlock(32, 2, 16, context_dim=24))
    x, ctx = g(2, 12, 32, seed=1), g(2, 5, 24, seed=2)
    fast = block(x, ctx, {})
    seen = []

    def identity_patch(n, extra):
        seen.append(extra["n_heads"])
        return n
    patched = block(x, ctx, {"patches": {"attn1_output_patch": [identity_patch]}})
    assert seen == [2]  # the patch path really ran
    assert torch.equal(fast, patched)


def test_resblock_shared_silu_of_the_embedding_is_the_same():
    torch.set_num_threads(1)
    for out_channels in (32, 64):  # identity and 1x1-conv skip connections
        block = _init(ResBlock(32, 48, out_channels))
        x, emb = g(2, 32, 6, 6, seed=1), g(2, 48, seed=2)
        alone = block(x, emb)
        assert torch.equal(block(x, emb, F.silu(emb)), alone)
        # the same as running the checkpoint's Sequentials module by module
        h = block.in_layers(x) + block.emb_layers(emb)[:, :, None, None]
        assert torch.equal(alone, block.skip_connection(x) + block.out_layers(h))


def test_timestep_embedding_frequencies_are_cached_and_exact():
    t = torch.tensor([999.0, 1.0, 500.5])
    half = 16
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None] * freqs[None]
    expected = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    assert torch.equal(timestep_embedding(t, 32), expected)
    assert torch.equal(timestep_embedding(t.long(), 33)[:, :32], timestep_embedding(t.long().float(), 32))
    with torch.inference_mode():
        timestep_embedding(t, 32)
    cached = unet._FREQS[(half, 10000, t.device)]
    assert not cached.is_inference()  # usable outside inference mode as well
    assert timestep_embedding(t, 32).requires_grad is False


def test_layers_cast_only_when_dtype_or_device_differ():
    torch.set_num_threads(1)
    lin = _init(ops.Linear(8, 4)).half()
    x = g(3, 8, seed=1)
    assert torch.equal(lin(x), F.linear(x, lin.weight.float(), lin.bias.float()))
    # a bias in another dtype than its weight is cast as well
    ln = _init(ops.LayerNorm(8))
    ln.bias.data = ln.bias.data.half()
    assert torch.equal(ln(x), F.layer_norm(x, (8,), ln.weight, ln.bias.float()))
    gn = _init(ops.GroupNorm(2, 8))
    gn.weight.data = gn.weight.data.half()
    xi = g(2, 8, 3, 3, seed=2)
    assert torch.equal(gn(xi), F.group_norm(xi, 2, gn.weight.float(), gn.bias))
    conv = _init(ops.Conv2d(8, 4, 3, padding=1, padding_mode="reflect"))
    assert torch.equal(conv(xi), torch.nn.Conv2d.forward(conv, xi))
    plain = _init(ops.Conv2d(8, 4, 3, padding=1))
    assert torch.equal(plain(xi), F.conv2d(xi, plain.weight, plain.bias, padding=1))


def _comfyui_source_available() -> bool:
    return os.path.isdir("/tmp/comfyui-ref/comfy") or os.path.isdir("/work/.mirror/pollockjj+ComfyUI/repo")


@pytest.mark.slow
@pytest.mark.skipif(not _comfyui_source_available(), reason="no ComfyUI 0.8.0 source to compare with")
def test_bench_unet_overhead_against_comfyui(tmp_path):
    # a subprocess: the bench imports ComfyUI's own `comfy` package, which must not meet compat/'s
    out = tmp_path / "unet_overhead.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "unet_overhead.py"), "--repeats", "2",
                           "--families", "sd1,sdxl", "--latent", "8", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for family, r in report["results"].items():
        assert r["outputs_equal"], (family, r["rel_diff"])
        ours, theirs = r["comfyd"], r["comfyui"]
        for metric in ("kernels", "module_calls", "python_calls"):
            assert ours[metric] < theirs[metric], (family, metric, ours[metric], theirs[metric])
