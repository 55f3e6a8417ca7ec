"""Text encoders: tiny CLIP-L / OpenCLIP-H / bigG in the real checkpoint layouts load through
the same code as full-size files and agree with an independent reference forward written
here from the raw checkpoint keys; prompt weights, clip skip, embeddings, SDXL pairing and
LoRA patches; and (slow) ComfyUI 0.8.0's encodings of the full-size oracle checkpoints."""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

from models.clip import (CLIP, clip_from_checkpoint, clip_from_text_encoder_files, sdxl_tokens,
                         text_encoder_state_dict)
from models.lora.adapters import Adapter
from models.state_dict import load_state_dict
from models.tokenizer import END_TOKEN, default_bpe
from tests.tiny_checkpoints import ORACLE_DIR, write_tiny_checkpoint

torch.set_num_threads(1)

PREFIXES = {  # family -> [(token key, checkpoint prefix, layout, heads, activation)]
    "sd1": [("l", "cond_stage_model.transformer.", "hf", 12, "quick_gelu")],
    "sd2": [("h", "cond_stage_model.model.", "openclip", 16, "gelu")],
    "sdxl": [("l", "conditioner.embedders.0.transformer.", "hf", 12, "quick_gelu"),
             ("g", "conditioner.embedders.1.model.", "openclip", 20, "gelu")],
    "sdxl_refiner": [("g", "conditioner.embedders.0.model.", "openclip", 20, "gelu")],
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """family -> (checkpoint path, raw state dict, CLIP)."""
    out = {}
    folder = tmp_path_factory.mktemp("tiny_te")
    for family in PREFIXES:
        path = write_tiny_checkpoint(str(folder / f"{family}.safetensors"), family, seed=3)
        out[family] = (path, load_state_dict(path), clip_from_checkpoint(path))
    return out


# -- an independent reference: the raw keys through torch.nn.MultiheadAttention ---------------
class Reference:
    def __init__(self, sd, prefix, layout, heads, activation):
        g = lambda k: sd[prefix + k].float()  # noqa: E731
        self.act = (lambda x: x * torch.sigmoid(1.702 * x)) if activation == "quick_gelu" else F.gelu
        if layout == "openclip":
            self.tok, self.pos = g("token_embedding.weight"), g("positional_embedding")
            n = 1 + max(int(k[len(prefix):].split(".")[2]) for k in sd if k.startswith(prefix + "transformer.resblocks."))
            L = lambda i, k: g(f"transformer.resblocks.{i}.{k}")  # noqa: E731
            self.layers = [dict(in_w=L(i, "attn.in_proj_weight"), in_b=L(i, "attn.in_proj_bias"),
                                out_w=L(i, "attn.out_proj.weight"), out_b=L(i, "attn.out_proj.bias"),
                                ln1=(L(i, "ln_1.weight"), L(i, "ln_1.bias")), ln2=(L(i, "ln_2.weight"), L(i, "ln_2.bias")),
                                fc1=(L(i, "mlp.c_fc.weight"), L(i, "mlp.c_fc.bias")),
                                fc2=(L(i, "mlp.c_proj.weight"), L(i, "mlp.c_proj.bias"))) for i in range(n)]
            self.ln_f = (g("ln_final.weight"), g("ln_final.bias"))
            self.proj = g("text_projection")  # [in, out], used as x @ P
        else:
            t = "text_model."
            self.tok = g(t + "embeddings.token_embedding.weight")
            self.pos = g(t + "embeddings.position_embedding.weight")
            n = 1 + max(int(k.split("layers.")[1].split(".")[0]) for k in sd if k.startswith(prefix + t + "encoder.layers."))
            L = lambda i, k: g(f"{t}encoder.layers.{i}.{k}")  # noqa: E731
            self.layers = [dict(in_w=torch.cat([L(i, f"self_attn.{p}_proj.weight") for p in "qkv"]),
                                in_b=torch.cat([L(i, f"self_attn.{p}_proj.bias") for p in "qkv"]),
                                out_w=L(i, "self_attn.out_proj.weight"), out_b=L(i, "self_attn.out_proj.bias"),
                                ln1=(L(i, "layer_norm1.weight"), L(i, "layer_norm1.bias")),
                                ln2=(L(i, "layer_norm2.weight"), L(i, "layer_norm2.bias")),
                                fc1=(L(i, "mlp.fc1.weight"), L(i, "mlp.fc1.bias")),
                                fc2=(L(i, "mlp.fc2.weight"), L(i, "mlp.fc2.bias"))) for i in range(n)]
            self.ln_f = (g(t + "final_layer_norm.weight"), g(t + "final_layer_norm.bias"))
            self.proj = None
        self.width, self.heads = self.tok.shape[1], heads

    def run(self, ids):
        """ids [B, 77] -> (hidden states after each layer, final-LN output)."""
        x = self.tok[ids] + self.pos
        mha = torch.nn.MultiheadAttention(self.width, self.heads, batch_first=True)
        causal = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).triu(1)
        ln = lambda x, p: F.layer_norm(x, (self.width,), *p)  # noqa: E731
        hidden = []
        for p in self.layers:
            with torch.no_grad():
                mha.in_proj_weight.copy_(p["in_w"]), mha.in_proj_bias.copy_(p["in_b"])
                mha.out_proj.weight.copy_(p["out_w"]), mha.out_proj.bias.copy_(p["out_b"])
                h = ln(x, p["ln1"])
                x = x + mha(h, h, h, attn_mask=causal, need_weights=False)[0]
                x = x + F.linear(self.act(F.linear(ln(x, p["ln2"]), *p["fc1"])), *p["fc2"])
            hidden.append(x)
        return hidden, ln(x, self.ln_f)

    def pooled(self, final, ids, projected):
        eos = (ids == END_TOKEN).int().argmax(dim=-1)
        v = final[torch.arange(ids.shape[0]), eos]
        return v @ self.proj if projected else v


def references(raw, family):
    return {key: Reference(raw, prefix, layout, heads, act) for key, prefix, layout, heads, act in PREFIXES[family]}


def token_ids(tokens, key):
    return torch.tensor([[t for t, _ in chunk] for chunk in tokens[key]])


def close(a, b, tol=2e-5):
    assert a.shape == b.shape, (a.shape, b.shape)
    err = ((a.double() - b.double()).norm() / b.double().norm()).item()
    assert err < tol, err


# -- loading and the per-family output rules --------------------------------------------------
def test_families_load_from_checkpoint_layouts(tiny):
    widths = {"sd1": (48, 48), "sd2": (64, 64), "sdxl": (128, 80), "sdxl_refiner": (80, 80)}
    for family, (_, _, clip) in tiny.items():
        assert clip.family == family
        cond, pooled = clip.encode_from_tokens(clip.tokenize("a photo of a cat"), return_pooled=True)
        assert tuple(cond.shape) == (1, 77, widths[family][0]) and tuple(pooled.shape) == (1, widths[family][1])
        assert cond.dtype == torch.float32 and torch.isfinite(cond).all()
        model = next(iter(clip.models.values()))
        assert next(model.parameters()).dtype == torch.float16  # fp16 weights, fp32 compute


@pytest.mark.parametrize("family", list(PREFIXES))
def test_encoding_matches_reference(tiny, family):
    _, raw, clip = tiny[family]
    refs = references(raw, family)
    tokens = clip.tokenize("a highly detailed photo of a cat, (soft light), 35mm")
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    outs = {key: ref.run(token_ids(tokens, key)) for key, ref in refs.items()}
    if family == "sd1":  # last layer through the final LayerNorm; unprojected pooled
        want = outs["l"][1]
        want_pooled = refs["l"].pooled(outs["l"][1], token_ids(tokens, "l"), False)
    elif family == "sd2":  # penultimate layer through the final LayerNorm; projected pooled
        want = F.layer_norm(outs["h"][0][-2], (64,), *refs["h"].ln_f)
        want_pooled = refs["h"].pooled(outs["h"][1], token_ids(tokens, "h"), True)
    elif family == "sdxl":  # penultimate layers, no final LayerNorm, L then G; pooled = projected G
        want = torch.cat([outs["l"][0][-2], outs["g"][0][-2]], dim=-1)
        want_pooled = refs["g"].pooled(outs["g"][1], token_ids(tokens, "g"), True)
    else:
        want = outs["g"][0][-2]
        want_pooled = refs["g"].pooled(outs["g"][1], token_ids(tokens, "g"), True)
    # the weighted "(soft light)" tokens: z = (z - z_empty) * w + z_empty per position
    empty = {key: ref.run(token_ids(clip.tokenize(""), key)) for key, ref in refs.items()}
    ws = torch.tensor([w for _, w in next(iter(tokens.values()))[0]])
    assert (ws != 1.0).sum() == 2
    if family == "sd1":
        want_empty = empty["l"][1]
    elif family == "sd2":
        want_empty = F.layer_norm(empty["h"][0][-2], (64,), *refs["h"].ln_f)
    elif family == "sdxl":
        want_empty = torch.cat([empty["l"][0][-2], empty["g"][0][-2]], dim=-1)
    else:
        want_empty = empty["g"][0][-2]
    w = ws[None, :, None]
    want = torch.where(w != 1.0, (want - want_empty) * w + want_empty, want)
    close(cond, want)
    close(pooled, want_pooled)


def test_weighting_is_relative_to_the_empty_chunk(tiny):
    clip = tiny["sd1"][2]
    plain = clip.encode("red cat")
    weighted = clip.encode_from_tokens(clip.tokenize("(red:1.5) cat"))
    empty = clip.encode("")
    assert torch.allclose(weighted[0, 1], (plain[0, 1] - empty[0, 1]) * 1.5 + empty[0, 1], atol=1e-5)
    assert torch.allclose(weighted[0, 2:], plain[0, 2:], atol=1e-5)
    assert not torch.allclose(empty, torch.zeros_like(empty))  # the empty prompt is a real encoding


def test_long_prompt_chunks_concatenate_and_pool_from_the_first(tiny):
    for family in ("sd1", "sdxl"):
        clip = tiny[family][2]
        text = ", ".join(["a fluffy cat"] * 30)
        tokens = clip.tokenize(text)
        cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
        assert cond.shape[1] == 77 * len(next(iter(tokens.values()))) == 154
        first = {k: v[:1] for k, v in tokens.items()}
        cond1, pooled1 = clip.encode_from_tokens(first, return_pooled=True)
        assert torch.allclose(cond[:, :77], cond1, atol=1e-5) and torch.allclose(pooled, pooled1, atol=1e-5)


def test_sdxl_pairs_text_g_and_text_l(tiny):
    clip = tiny["sdxl"][2]
    long_text = ", ".join(["a fluffy cat"] * 30)
    tokens = sdxl_tokens(clip, long_text, "a dog")
    assert len(tokens["g"]) == len(tokens["l"]) == 2
    assert tokens["l"][1] == clip.tokenize("")["l"][0]
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    assert tuple(cond.shape) == (1, 154, 128)
    g_only = clip.encode_from_tokens(clip.tokenize(long_text), return_pooled=True)
    assert torch.allclose(cond[..., 48:], g_only[0][..., 48:], atol=1e-5)  # the G half is text_g's
    assert torch.allclose(pooled, g_only[1], atol=1e-6)  # pooled: CLIP-G's, first chunk


# -- clip skip --------------------------------------------------------------------------------
def test_clip_skip(tiny):
    _, raw, clip = tiny["sd1"]
    ref = references(raw, "sd1")["l"]
    tokens = clip.tokenize("a photo of a cat")
    hidden, final = ref.run(token_ids(tokens, "l"))
    skip = clip.clone()
    skip.clip_layer(-2)
    cond, pooled = skip.encode_from_tokens(tokens, return_pooled=True)
    close(cond, F.layer_norm(hidden[-2], (48,), *ref.ln_f))  # SD1: the chosen layer through the final LN
    base_cond, base_pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    assert clip.layer_idx is None and torch.equal(pooled, base_pooled)  # clone only; pooled unchanged
    close(base_cond, final)
    deep = clip.clone()
    deep.clip_layer(-24)  # deeper than CLIP-L's 12 layers: ComfyUI falls back to the last layer
    assert torch.equal(deep.encode_from_tokens(tokens), base_cond)


def test_clip_skip_sdxl_applies_to_both_encoders(tiny):
    _, raw, clip = tiny["sdxl"]
    refs = references(raw, "sdxl")
    tokens = clip.tokenize("a photo of a cat")
    (hl, fl), (hg, fg) = refs["l"].run(token_ids(tokens, "l")), refs["g"].run(token_ids(tokens, "g"))
    last = clip.clone()
    last.clip_layer(-1)  # last hidden states, still without the final LayerNorm
    close(last.encode_from_tokens(tokens), torch.cat([hl[-1], hg[-1]], dim=-1))
    deep = clip.clone()
    deep.clip_layer(-20)  # CLIP-L falls back to its final-LN output, CLIP-G takes layer -20
    close(deep.encode_from_tokens(tokens), torch.cat([fl, hg[-20]], dim=-1))


# -- embeddings -------------------------------------------------------------------------------
def test_embedding_vectors_replace_token_embeddings(tiny, tmp_path):
    from safetensors.torch import save_file

    from models.embeddings import EmbeddingLibrary
    cat = default_bpe().encode("cat")[0]
    sd1, sdxl = tiny["sd1"][2], tiny["sdxl"][2]
    row = lambda clip, name: clip.models[name].text_model.embeddings.token_embedding.weight[cat].float()  # noqa: E731
    save_file({"emb_params": row(sd1, "clip_l")[None]}, str(tmp_path / "catvec.safetensors"))
    save_file({"clip_l": row(sdxl, "clip_l")[None], "clip_g": row(sdxl, "clip_g")[None]},
              str(tmp_path / "catpair.safetensors"))
    save_file({"emb_params": torch.randn(2, 768)}, str(tmp_path / "wide.safetensors"))
    lookup = EmbeddingLibrary([str(tmp_path)])
    for clip, name in ((sd1, "catvec"), (sdxl, "catpair")):
        with_emb = CLIP(clip.family, clip.models, lookup)
        a = with_emb.encode_from_tokens(with_emb.tokenize(f"a (embedding:{name}:1.2) on a mat"), return_pooled=True)
        b = with_emb.encode_from_tokens(with_emb.tokenize("a (cat:1.2) on a mat"), return_pooled=True)
        assert torch.allclose(a[0], b[0], atol=1e-6) and torch.allclose(a[1], b[1], atol=1e-6)
    # a vector of another width is dropped (warning) and a pad token appended instead
    with_emb = CLIP("sd1", sd1.models, lookup)
    tokens = with_emb.tokenize("a embedding:wide")
    assert sum(torch.is_tensor(t) for t, _ in tokens["l"][0]) == 2
    assert torch.allclose(with_emb.encode_from_tokens(tokens), sd1.encode("a"), atol=1e-6)


# -- LoRA patches on the shared weights --------------------------------------------------------
def test_lora_patches_apply_per_clone_and_restore(tiny):
    clip = tiny["sd1"][2]
    tokens = clip.tokenize("a photo of a cat")
    before = clip.encode_from_tokens(tokens)
    key = "text_model.encoder.layers.3.mlp.fc1.weight"
    weight = clip.models["clip_l"].text_model.encoder.layers[3].mlp.fc1.weight
    patched = clip.clone()
    got = patched.add_patches({("clip_l", key): Adapter("diff", {"diff": torch.full(tuple(weight.shape), 0.05)}),
                               ("unet", "input_blocks.0.0.weight"): Adapter("diff", {"diff": torch.zeros(1)})}, 0.8)
    assert got == [("clip_l", key)]
    changed = patched.encode_from_tokens(tokens)
    assert not torch.allclose(changed, before, atol=1e-4)
    assert torch.equal(clip.encode_from_tokens(tokens), before)  # the unpatched clone restores the weights
    assert torch.equal(patched.encode_from_tokens(tokens), changed)


# -- stand-alone text-encoder files (CLIPLoader / DualCLIPLoader) --------------------------------
def test_standalone_text_encoder_files(tiny, tmp_path):
    from safetensors.torch import save_file
    _, raw, clip = tiny["sdxl"]
    l_sd = {k[len("conditioner.embedders.0.transformer."):]: v for k, v in raw.items()
            if k.startswith("conditioner.embedders.0.transformer.")}
    g_sd = {k[len("conditioner.embedders.1.model."):]: v for k, v in raw.items()
            if k.startswith("conditioner.embedders.1.model.")}
    save_file(l_sd, str(tmp_path / "clip_l.safetensors"))
    save_file(g_sd, str(tmp_path / "clip_g_openclip.safetensors"))
    dual = clip_from_text_encoder_files([str(tmp_path / "clip_l.safetensors"), str(tmp_path / "clip_g_openclip.safetensors")])
    assert dual.family == "sdxl"
    tokens = clip.tokenize("a cat")
    assert torch.equal(dual.encode_from_tokens(tokens), clip.encode_from_tokens(tokens))
    single = clip_from_text_encoder_files([str(tmp_path / "clip_l.safetensors")])
    assert single.family == "sd1" and tuple(single.encode("a cat").shape) == (1, 77, 48)
    assert set(text_encoder_state_dict(str(tmp_path / "clip_g_openclip.safetensors"))) >= {"text_projection.weight"}
    with pytest.raises(ValueError):
        clip_from_text_encoder_files([str(tmp_path / "clip_l.safetensors")] * 2)


# -- ComfyUI 0.8.0 on the full-size oracle checkpoints (slow) -----------------------------------
ORACLE_CKPT = {"sd15": "oracle_sd15_s1.safetensors", "sdxl": "oracle_sdxl_s2.safetensors"}


def rel_rms(a, b):
    a, b = a.double(), b.double()
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()


def max_abs(a, b):
    return (a.double() - b.double()).abs().max().item()


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def oracle(request):
    from safetensors.torch import load_file

    from tests.oracle_models import require_oracle_model
    arch = request.param
    folder = os.path.join(ORACLE_DIR, "components", arch)
    if not os.path.isdir(folder):
        pytest.skip("oracle components not available")
    torch.set_num_threads(2)
    clip = clip_from_checkpoint(require_oracle_model(ORACLE_CKPT[arch]))
    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    with open(os.path.join(ORACLE_DIR, "components", "tolerances.json")) as f:
        tol = json.load(f)["rel_rms"]
    yield arch, clip, load_file(os.path.join(folder, "text_encoder.safetensors")), meta, tol
    torch.set_num_threads(1)


@pytest.mark.slow
def test_oracle_text_encodings(oracle):
    from models.diffusion import sdxl_adm
    arch, clip, ref, meta, tol = oracle
    results, pooled_of = [], {}
    for name, p in meta["prompts"].items():
        c = clip
        if name.endswith("_clipskip2"):
            c = clip.clone()
            c.clip_layer(-2)
        tokens = c.tokenize(p["text"]) if "text" in p else sdxl_tokens(c, p["text_g"], p["text_l"])
        [[cond, extra]] = c.encode_from_tokens_scheduled(tokens)
        pooled_of[name] = extra["pooled_output"]
        for key, got in ((f"te.{name}.cond", cond), (f"te.{name}.pooled_output", extra["pooled_output"])):
            assert got.shape == ref[key].shape, key
            results.append((key, rel_rms(got, ref[key]), max_abs(got, ref[key]), tol["te.*." + key.split(".")[-1]]))
    if arch == "sdxl":  # the ADM vector KSampler builds from these conditionings
        for name, size in (("p0_cat", 256), ("p1_empty", 256), ("sdxl_a", 1024), ("sdxl_b_long_g", 1024)):
            adm = sdxl_adm(pooled_of[name], size, size, 0, 0, size, size)
            key = f"adm.{name}_latent256" if size == 256 else f"adm.{name}"
            results.append((key, rel_rms(adm, ref[key]), max_abs(adm, ref[key]), tol["adm.*"]))
    for key, err, worst, limit in results:
        print(f"{arch} {key:32s} rel_rms {err:.2e} max_abs {worst:.2e} (tolerance {limit:.0e})")
    assert len(results) >= 12
    bad = [(k, e) for k, e, _, limit in results if not e <= limit]
    assert not bad, bad
