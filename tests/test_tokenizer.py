"""The CLIP tokenizer: ComfyUI 0.8.0's token ids and weights (oracle), prompt syntax,
77-token chunking, and textual-inversion embeddings in prompts."""
from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from models.embeddings import EmbeddingLibrary, find_embedding
from models.tokenizer import (END_TOKEN, START_TOKEN, ClipTokenizer, PromptTokenizer, default_bpe,
                              find_vocabulary, weighted_segments)
from tests.tiny_checkpoints import ORACLE_DIR

COMPONENTS = os.path.join(ORACLE_DIR, "components")


def oracle_prompts(arch):
    path = os.path.join(COMPONENTS, arch, "meta.json")
    if not os.path.exists(path):
        pytest.skip("oracle components not available")
    with open(path) as f:
        return json.load(f)["prompts"]


def ids(chunks):
    return [[t for t, _ in c] for c in chunks]


def weights(chunks):
    return [[w for _, w in c] for c in chunks]


def content(chunk, pad=END_TOKEN):
    """The ids between the start token and the first end token."""
    toks = [t for t, _ in chunk]
    assert toks[0] == START_TOKEN
    return toks[1:toks.index(END_TOKEN)]


# -- ComfyUI's tokens for the oracle prompts ------------------------------------------------
@pytest.mark.parametrize("arch,family", [("sd15", "sd1"), ("sdxl", "sdxl")])
def test_oracle_prompt_tokens(arch, family):
    tok = PromptTokenizer(family)
    checked = 0
    for name, p in oracle_prompts(arch).items():
        if "text" in p:
            cases = [(p["text"], key, chunks) for key, chunks in p["tokens"].items()]
        else:  # CLIPTextEncodeSDXL: text_g and text_l tokenised separately (before the node pads them)
            cases = [(p["text_g"], "g", p["tokens_g"]), (p["text_l"], "l", p["tokens_l"])]
        for text, key, want in cases:
            got = tok.tokenize_with_weights(text)[key]
            assert ids(got) == [c["ids"] for c in want], (name, key)
            assert weights(got) == [c["weights"] for c in want], (name, key)
            checked += 1
    assert checked >= 6


def test_vocabulary_comes_from_an_installed_package():
    path = find_vocabulary()
    assert path.endswith("bpe_simple_vocab_16e6.txt.gz") and os.path.isfile(path)
    bpe = default_bpe()
    assert len(bpe.encoder) == 49408
    assert bpe.encoder["<|startoftext|>"] == START_TOKEN and bpe.encoder["<|endoftext|>"] == END_TOKEN


def _openai_reference_tokenizer():
    """OpenAI's own SimpleTokenizer from the same package, loaded without the package's
    __init__ (which needs torchvision)."""
    folder = os.path.dirname(find_vocabulary())
    src = os.path.join(folder, "simple_tokenizer.py")
    if not os.path.exists(src):
        pytest.skip("the vocabulary package has no simple_tokenizer.py")
    pytest.importorskip("ftfy")
    spec = importlib.util.spec_from_file_location("_clip_simple_tokenizer", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.SimpleTokenizer(find_vocabulary())


def test_bpe_matches_openai_reference_on_plain_text():
    ref = _openai_reference_tokenizer()
    bpe = default_bpe()
    texts = ["a photo of a cat", "masterpiece, best quality, ultra-detailed 8k wallpaper",
             "don't you're they'll I'm we've she'd it's", "1girl 2boys 35mm f/1.8 ISO-400 @home #tag",
             "antidisestablishmentarianism supercalifragilistic", "RGB(255,0,0) x^2+y^2 = r^2 !!! ???",
             "hello   world\ttabs\nnewlines", "Zürich café naïve", "emoji 🐱 and ümlaut"]
    for text in texts:
        assert bpe.encode(text) == ref.encode(text), text


def test_normalisation_and_special_tokens():
    bpe = default_bpe()
    assert bpe.encode("A PHOTO") == bpe.encode("a photo")
    assert bpe.encode("a \u3000 photo\x07") == bpe.encode("a photo")  # ideographic space, control char
    # CJK ideographs are split into single characters (BasicTokenizer), accents are kept
    assert bpe.encode("猫犬") == bpe.encode("猫 犬")
    assert bpe.encode("café") != bpe.encode("cafe")
    assert bpe.encode("cat<|endoftext|>dog") == bpe.encode("cat") + [END_TOKEN] + bpe.encode("dog")


# -- weighting syntax ------------------------------------------------------------------------
def test_weight_syntax():
    assert weighted_segments("(a:1.2)") == [("a", 1.2)]
    assert weighted_segments("(a)") == [("a", pytest.approx(1.1))]
    assert weighted_segments("((a))")[0][1] == 1.1 * 1.1 == 1.2100000000000002
    assert weighted_segments("((a:1.5))") == [("a", 1.5)]  # absolute, replaces the inherited multiplier
    assert weighted_segments("x (a:0.5) y") == [("x ", 1.0), ("a", 0.5), (" y", 1.0)]
    assert weighted_segments("(a:b)") == [("a:b", pytest.approx(1.1))]  # not a number: colon stays
    assert weighted_segments("(:1.5)") == [(":1.5", pytest.approx(1.1))]  # colon first: no weight
    assert weighted_segments("(a:1:2)") == [("a:1", 2.0)]  # the last colon counts
    assert weighted_segments("[a]") == [("[a]", 1.0)]
    assert weighted_segments("(unbalanced") == [("(unbalanced", 1.0)]
    assert weighted_segments("((a) b:1.3)") == [("a", pytest.approx(1.43)), (" b", 1.3)]


def test_weights_on_tokens_and_escapes():
    tok = ClipTokenizer()
    bpe = default_bpe()
    chunk = tok.tokenize_with_weights("(red:1.3) cat, [blue] ((sky))")[0]
    assert content(chunk) == bpe.encode("red") + bpe.encode(" cat, [blue] ") + bpe.encode("sky")
    ws = [w for _, w in chunk]
    assert ws[1] == 1.3 and ws[len(content(chunk))] == 1.2100000000000002 and ws[2] == 1.0
    escaped = tok.tokenize_with_weights(r"a \(b\) c")[0]
    assert content(escaped) == bpe.encode("a (b) c")
    assert all(w == 1.0 for _, w in escaped)
    # escaped parentheses inside a weighted span are literal too
    inner = tok.tokenize_with_weights(r"(x \(y\):1.5)")[0]
    assert content(inner) == bpe.encode("x (y)")
    assert [w for _, w in inner][1:1 + len(content(inner))] == [1.5] * len(content(inner))
    # each weighted span is tokenised on its own (BPE does not merge across the boundary)
    assert content(tok.tokenize_with_weights("(cat)dog")[0]) == bpe.encode("cat") + bpe.encode("dog")


# -- chunking ---------------------------------------------------------------------------------
def test_chunk_layout_and_padding():
    for pad in (END_TOKEN, 0):
        tok = ClipTokenizer(pad_token=pad)
        empty = tok.tokenize_with_weights("")
        assert ids(empty) == [[START_TOKEN, END_TOKEN] + [pad] * 75]
        assert tok.empty_chunk() == [(t, 1.0) for t in ids(empty)[0]]
        one = tok.tokenize_with_weights("cat")[0]
        assert len(one) == 77 and one[2] == (END_TOKEN, 1.0) and one[3] == (pad, 1.0)


def test_75_tokens_fit_one_chunk_76_need_two():
    tok = ClipTokenizer()
    cat = default_bpe().encode("cat")[0]
    c75 = tok.tokenize_with_weights(" ".join(["cat"] * 75))
    assert len(c75) == 1 and ids(c75)[0] == [START_TOKEN] + [cat] * 75 + [END_TOKEN]
    c76 = tok.tokenize_with_weights(" ".join(["cat"] * 76))
    assert len(c76) == 2  # one long group: split at the boundary
    assert ids(c76)[0] == [START_TOKEN] + [cat] * 75 + [END_TOKEN]
    assert content(c76[1]) == [cat]


def test_short_weighted_group_moves_whole_long_group_splits():
    tok = ClipTokenizer()
    bpe = default_bpe()
    cat, dog = bpe.encode("cat")[0], bpe.encode("dog")[0]
    # 72 plain tokens then a 5-token weighted span: 72 + 5 > 75, the span (< 8) moves to chunk 2
    text = " ".join(["cat"] * 72) + " (" + " ".join(["dog"] * 5) + ":1.2)"
    chunks = tok.tokenize_with_weights(text)
    assert len(chunks) == 2
    assert content(chunks[0]) == [cat] * 72 and ids(chunks)[0][73:] == [END_TOKEN] * 4
    assert content(chunks[1]) == [dog] * 5 and all(w == 1.2 for _, w in chunks[1][1:6])
    # the same with an 8-token span: it is split, 3 tokens in chunk 1, 5 in chunk 2
    text = " ".join(["cat"] * 72) + " (" + " ".join(["dog"] * 8) + ":1.2)"
    chunks = tok.tokenize_with_weights(text)
    assert content(chunks[0]) == [cat] * 72 + [dog] * 3
    assert content(chunks[1]) == [dog] * 5
    # word ids: each group has its own, special tokens 0
    with_ids = tok.tokenize_with_weights("a (b:1.2) c", return_word_ids=True)[0]
    assert [i for _, _, i in with_ids[:5]] == [0, 1, 2, 3, 0]


def test_sdxl_and_sd2_tokenizers():
    sdxl = PromptTokenizer("sdxl").tokenize_with_weights("a cat")
    assert set(sdxl) == {"g", "l"}
    assert ids(sdxl["g"])[0][:4] == ids(sdxl["l"])[0][:4]
    assert ids(sdxl["g"])[0][4:] == [0] * 73 and ids(sdxl["l"])[0][4:] == [END_TOKEN] * 73
    sd2 = PromptTokenizer("sd2").tokenize_with_weights("a cat")
    assert set(sd2) == {"h"} and ids(sd2["h"])[0][-1] == 0
    with pytest.raises(ValueError):
        PromptTokenizer("flux")


# -- embeddings -------------------------------------------------------------------------------
@pytest.fixture
def emb_dir(tmp_path):
    from safetensors.torch import save_file
    d = tmp_path / "embeddings"
    (d / "sub").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    vec = lambda n, w: torch.randn(n, w, generator=g)  # noqa: E731
    save_file({"emb_params": vec(2, 768)}, str(d / "two.safetensors"))
    torch.save({"string_to_param": {"*": vec(3, 768)}, "name": "a1111", "step": 100}, str(d / "a1111.pt"))
    save_file({"clip_l": vec(1, 768), "clip_g": vec(2, 1280)}, str(d / "sub" / "pair.safetensors"))
    torch.save([{"x": vec(1, 768), "y": vec(1, 1280)}, {"z": vec(2, 768)}], str(d / "listed.bin"))
    save_file({"bundle_emb.foo.string_to_param.*": vec(1, 768), "lora_unet_x.alpha": torch.tensor(1.0)},
              str(d / "bundled.safetensors"))
    (tmp_path / "outside.safetensors").write_bytes(b"")
    return d


def test_embedding_files_and_lookup(emb_dir, tmp_path):
    lib = EmbeddingLibrary([str(emb_dir)])
    assert lib("two", 768, "clip_l").shape == (2, 768)
    assert lib("two.safetensors", 768, "clip_l").shape == (2, 768)
    assert lib("a1111", 768, "clip_l").shape == (3, 768)
    assert lib("pair", 768, "clip_l").shape == (1, 768)  # found in a sub-folder
    assert lib("sub/pair", 1280, "clip_g").shape == (2, 1280)
    assert lib("listed", 768, "clip_l").shape == (3, 768)  # tensors of the encoder's width, concatenated
    assert lib("listed", 1280, "clip_g").shape == (1, 1280)
    assert lib("bundled", 768, "clip_l").shape == (1, 768)
    assert lib("missing", 768, "clip_l") is None
    assert find_embedding("../outside", [str(emb_dir)]) is None
    assert find_embedding(str(tmp_path / "outside.safetensors"), [str(emb_dir)]) is None


def test_embeddings_in_prompts(emb_dir):
    lib = EmbeddingLibrary([str(emb_dir)])
    bpe = default_bpe()
    tok = ClipTokenizer(embedding_lookup=lib)
    chunk = tok.tokenize_with_weights("a embedding:two cat")[0]
    assert chunk[1][0] == bpe.encode("a")[0]
    assert torch.is_tensor(chunk[2][0]) and torch.is_tensor(chunk[3][0]) and chunk[2][0].shape == (768,)
    assert torch.equal(chunk[2][0], lib("two", 768, "clip_l")[0])
    assert chunk[4][0] == bpe.encode("cat")[0] and chunk[5][0] == END_TOKEN
    weighted = tok.tokenize_with_weights("(embedding:a1111:1.2), x")[0]
    assert [w for _, w in weighted[1:4]] == [1.2] * 3 and torch.is_tensor(weighted[3][0])
    # trailing comma stripped from the name and tokenised; unknown names dropped with a warning
    comma = tok.tokenize_with_weights("embedding:two, dog")[0]
    assert torch.is_tensor(comma[1][0]) and torch.is_tensor(comma[2][0])
    assert [t for t, _ in comma[3:5]] == bpe.encode(", dog")
    assert content(tok.tokenize_with_weights("x embedding:nope y")[0]) == bpe.encode("x") + bpe.encode("y")
    # "embedding:" not after a space or newline is ordinary text
    assert content(tok.tokenize_with_weights("xembedding:two")[0]) == bpe.encode("xembedding:two")
    # without a lookup (no embeddings folder) the text is tokenised literally
    assert content(ClipTokenizer().tokenize_with_weights("embedding:two")[0]) == bpe.encode("embedding:two")


def test_sdxl_pair_embedding_gives_each_encoder_its_vectors(emb_dir):
    lib = EmbeddingLibrary([str(emb_dir)])
    out = PromptTokenizer("sdxl", lib).tokenize_with_weights("embedding:pair")
    g, l = out["g"][0], out["l"][0]
    assert g[1][0].shape == (1280,) and g[2][0].shape == (1280,) and g[3][0] == END_TOKEN
    assert l[1][0].shape == (768,) and l[2][0] == END_TOKEN


def test_embeddings_count_toward_the_chunk():
    vectors = torch.zeros(10, 768)
    tok = ClipTokenizer(embedding_lookup=lambda name, width, key: vectors if name == "ten" else None)
    chunks = tok.tokenize_with_weights(" ".join(["cat"] * 70) + " embedding:ten")
    assert len(chunks) == 2  # 10 vectors (a large group) split: 5 in chunk 1, 5 in chunk 2
    assert sum(torch.is_tensor(t) for t, _ in chunks[0]) == 5
    assert sum(torch.is_tensor(t) for t, _ in chunks[1]) == 5
