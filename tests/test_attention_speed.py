"""The attention speed paths give the plain path's numbers: fused QKV projections (with
LoRA patches in place, widened, restored), SDPA backend preference, channels_last."""
import logging

import pytest
import torch

from models import attention
from models.attention import BasicTransformerBlock, CrossAttention, SpatialTransformer, fused_weight
from models.lora.adapters import Adapter
from models.lora.patcher import WeightPatcher


def g(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _init(module: torch.nn.Module, seed=0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return module.requires_grad_(False)


@pytest.fixture
def fused_on_cpu():
    torch.set_num_threads(1)
    previous = attention.set_fused_qkv({"cpu"})
    yield
    attention.set_fused_qkv(previous)


def _unfused(fn):
    previous = attention.set_fused_qkv(set())
    try:
        return fn()
    finally:
        attention.set_fused_qkv(previous)


def _close(a, b, rel=1e-5):
    assert (a - b).abs().max() <= rel * b.abs().max(), float((a - b).abs().max() / b.abs().max())


def test_fused_self_attention_matches_three_matmuls(fused_on_cpu):
    block = _init(SpatialTransformer(64, heads=4, dim_head=16, depth=2, context_dim=32, use_linear=True))
    x, ctx = g(2, 64, 6, 5, seed=1), g(2, 7, 32, seed=2)
    keys = {k: v.clone() for k, v in block.state_dict().items()}
    plain = _unfused(lambda: block(x, ctx))
    fused = block(x, ctx)
    _close(fused, plain)
    # the state dict is unchanged: same keys, same values, weights now views of one tensor
    after = block.state_dict()
    assert list(after) == list(keys) and all(torch.equal(after[k], keys[k]) for k in keys)
    attn = block.transformer_blocks[0].attn1
    q, k, v = attn.to_q.weight, attn.to_k.weight, attn.to_v.weight
    assert k.data_ptr() == q.data_ptr() + q.numel() * q.element_size()
    assert v.data_ptr() == k.data_ptr() + k.numel() * k.element_size()
    # cross-attention (attn2) keeps its own projections
    a2 = block.transformer_blocks[0].attn2
    assert a2.to_k.weight.untyped_storage().data_ptr() != a2.to_q.weight.untyped_storage().data_ptr()
    _close(block(x, ctx), plain)  # the second call reuses the fused view


def test_fusing_does_not_copy_the_weights(fused_on_cpu):
    attn = _init(CrossAttention(32, heads=2, dim_head=16))
    x = g(1, 9, 32, seed=1)
    attn(x)
    w = fused_weight((attn.to_q, attn.to_k, attn.to_v), x)
    assert w.shape == (96, 32)
    assert w.data_ptr() == attn.to_q.weight.data_ptr()  # a view, not a cached copy
    assert torch.equal(w[32:64], attn.to_k.weight)


@pytest.mark.parametrize("widen", [False, True], ids=["in_place", "widened"])
def test_lora_patch_is_picked_up_and_restored(fused_on_cpu, widen):
    """WeightPatcher writes in place (the fused view sees it) or, widening fp16 storage to
    fp32, swaps the tensor (the next call re-fuses); restoring brings the plain numbers back."""
    dtype = torch.float16 if widen else torch.float32
    attn = _init(CrossAttention(32, heads=2, dim_head=16)).to(dtype)
    x = g(2, 9, 32, seed=1)
    if widen:  # fp16 storage, fp32 compute (ops casts per call)
        x = x.float()
    before = attn(x)
    patcher = WeightPatcher({"unet": attn}, compute_dtypes={"unet": torch.float32} if widen else None)
    lora = {("unet", f"{name}.weight"): Adapter("lora", {"up": g(32, 2, seed=3 + i), "down": g(2, 32, seed=9 + i)})
            for i, name in enumerate(("to_q", "to_k", "to_v"))}
    patcher.apply([(lora, 0.7)])
    assert attn.to_q.weight.dtype == (torch.float32 if widen else dtype)
    patched = attn(x)
    q, k = attn.to_q.weight, attn.to_k.weight
    assert k.data_ptr() == q.data_ptr() + q.numel() * q.element_size()  # ran fused
    assert not torch.allclose(patched, before)
    _close(patched, _unfused(lambda: attn(x)))
    patcher.apply([])
    _close(attn(x), before)
    assert attn.to_q.weight.dtype == dtype


def test_weights_on_another_device_or_mixed_dtypes_are_not_fused(fused_on_cpu):
    attn = _init(CrossAttention(32, heads=2, dim_head=16))
    x = g(1, 4, 32)
    attn.to_k.weight.data = attn.to_k.weight.data.half()
    assert fused_weight((attn.to_q, attn.to_k, attn.to_v), x) is None
    streamed = CrossAttention(32, heads=2, dim_head=16, device="meta")  # weights elsewhere (--lowvram)
    assert fused_weight((streamed.to_q, streamed.to_k, streamed.to_v), x) is None


def test_fusing_is_off_on_the_cpu_by_default():
    assert "cpu" not in attention._FUSED_QKV_DEVICES and "cuda" in attention._FUSED_QKV_DEVICES
    attn = _init(CrossAttention(32, heads=2, dim_head=16))
    ptr = attn.to_k.weight.data_ptr()
    attn(g(1, 4, 32))
    assert attn.to_k.weight.data_ptr() == ptr


def test_transformer_patches_still_see_the_projections(fused_on_cpu):
    """An attn1 replacement patch gets to_q/to_k/to_v outputs, fused weights or not."""
    block = _init(BasicTransformerBlock(32, 2, 16, context_dim=8))
    x, ctx = g(1, 6, 32, seed=1), g(1, 3, 8, seed=2)
    seen = []

    def replace(q, k, v, extra):
        seen.append(torch.equal(k, block.attn1.to_k(x_norm)))
        return attention.attention(q, k, v, extra["n_heads"])

    x_norm = block.norm1(x)
    opts = {"patches_replace": {"attn1": {("input", 1): replace}}, "block": ("input", 1)}
    out = block(x, ctx, transformer_options=opts)
    plain = _unfused(lambda: block(x, ctx))
    _close(block(x, ctx), plain)
    _close(out, plain)
    assert seen == [True]


def test_sdpa_backend_order_prefers_fused_kernels_and_is_reported_once(caplog):
    order = list(torch._C._get_sdp_priority_order())
    state = dict(attention._SDPA, reported=set())
    try:
        picked = attention._prefer_fused_sdpa()
        names = [b.name for b in picked]
        assert names[-1] == "MATH" and names.index("FLASH_ATTENTION") < names.index("MATH")
        new = list(torch._C._get_sdp_priority_order())
        assert new[:len(picked)] == [int(b) for b in picked]
        q = g(1, 2, 5, 8)
        with caplog.at_level(logging.INFO, logger="models.attention"):
            attention._report_sdpa(q, q, q, None)
            attention._report_sdpa(q, q, q, None)
        lines = [r.getMessage() for r in caplog.records if "SDPA on" in r.getMessage()]
        assert len(lines) == 1 and "8-dim heads" in lines[0], lines
    finally:
        torch._C._set_sdp_priority_order(order)
        attention._SDPA.clear()
        attention._SDPA.update(state)


def test_cpu_attention_leaves_the_sdpa_settings_alone():
    order = list(torch._C._get_sdp_priority_order())
    attention._SDPA["configured"] = False
    q = g(1, 4, 16)
    out = attention.attention(q, q, q, heads=2)
    assert out.shape == q.shape
    assert attention._SDPA["configured"] is False
    assert list(torch._C._get_sdp_priority_order()) == order


# -- the whole UNet: channels_last and fused QKV against the plain path -------------------------

def _micro_unet(linear: bool):
    from models.detect import UNetConfig
    from models.unet import UNetModel
    cfg = UNetConfig(in_channels=4, out_channels=4, model_channels=32, num_res_blocks=[1, 1], channel_mult=[1, 2],
                     transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1,
                     context_dim=16, use_linear_in_transformer=linear, adm_in_channels=None, num_heads=2)
    return _init(UNetModel(cfg), seed=3)


def _unet_inputs():
    return g(2, 4, 8, 12, seed=4), torch.tensor([999.0, 10.0]), g(2, 5, 16, seed=5)


@pytest.fixture
def channels_last(monkeypatch):
    from models import devices
    torch.set_num_threads(1)
    monkeypatch.setattr(devices.settings(), "channels_last", True, raising=False)


@pytest.mark.parametrize("linear", [False, True], ids=["conv_proj", "linear_proj"])
def test_channels_last_unet_matches_the_plain_layout(linear, monkeypatch):
    from models import devices
    torch.set_num_threads(1)
    unet = _micro_unet(linear)
    x, t, ctx = _unet_inputs()
    plain = unet(x, t, context=ctx)
    keys = {k: v.clone() for k, v in unet.state_dict().items()}
    monkeypatch.setattr(devices.settings(), "channels_last", True, raising=False)
    out = unet(x, t, context=ctx)
    conv = unet.input_blocks[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert out.is_contiguous()  # leaves in the usual layout
    _close(out, plain)
    after = unet.state_dict()
    assert all(torch.equal(after[k], keys[k]) for k in keys)



def test_force_channels_last_flag_reaches_the_settings():
    from models import devices
    from server.cli import parse_args
    assert devices.settings_from_args(parse_args(["--force-channels-last"])).channels_last is True
    assert devices.settings_from_args(parse_args([])).channels_last is False


def test_channels_last_and_fused_qkv_together_match_the_plain_unet(channels_last, fused_on_cpu):
    unet = _micro_unet(True)
    x, t, ctx = _unet_inputs()
    from models import devices
    devices.settings().channels_last = False
    plain = _unfused(lambda: unet(x, t, context=ctx))
    devices.settings().channels_last = True
    _close(unet(x, t, context=ctx), plain)
