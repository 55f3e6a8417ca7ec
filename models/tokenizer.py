"""CLIP's byte-pair tokenizer with ComfyUI's prompt syntax and 77-token chunking.

The vocabulary is OpenAI's `bpe_simple_vocab_16e6.txt.gz` (the merge list CLIP was trained
with), taken from an installed package that ships it: `openai-clip` (a dependency of comfyd;
it needs only ftfy/regex/tqdm, unlike open-clip-torch and clip-anytorch which pull in
torchvision) or, when present, `open_clip`. The file is located without importing those
packages (their __init__ imports torchvision) and checked against its known SHA-256.

Text normalisation follows ComfyUI's tokenizer (Hugging Face's slow CLIPTokenizer without
ftfy, i.e. its BasicTokenizer path): control characters dropped, whitespace collapsed, CJK
ideographs split apart, NFC, lower case, accents kept; then CLIP's regex and BPE.

Prompt syntax (COVERAGE.md §4.2): `(a)` x1.1 per level, `(a:w)` absolute weight, `\\(` `\\)`
literal parentheses, `[a]` plain text; `embedding:name` inserts textual-inversion vectors
found by a lookup callback. Each weighted span (and each embedding) is a group; chunks are
[start] + 75 tokens + [end] + padding, a group shorter than 8 tokens moves whole to the next
chunk, longer groups are split at the boundary.

tokenize() results have ComfyUI's shape, which custom nodes rely on: {encoder key: [chunk,
...]}, each chunk a list of (token, weight) with token an int id or a 1-D embedding tensor.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import logging
import os
import re
import unicodedata
from typing import Callable

import regex

log = logging.getLogger(__name__)

START_TOKEN = 49406
END_TOKEN = 49407
CHUNK_LENGTH = 77
MAX_WORD_LENGTH = 8  # groups at least this long are split across chunks rather than moved
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
VOCAB_PACKAGES = ("clip", "open_clip")  # openai-clip, open-clip-torch
NUM_MERGES = 49152 - 256 - 2
SPECIAL_TOKENS = {"<|startoftext|>": START_TOKEN, "<|endoftext|>": END_TOKEN}
EMBEDDING_PREFIX = "embedding:"

# name, width, key ("clip_l", "clip_g", "clip_h") -> [n, width] vectors, or None if unknown
EmbeddingLookup = Callable[[str, int, str], "object | None"]


class VocabularyNotFound(RuntimeError):
    pass


def find_vocabulary() -> str:
    """Path of CLIP's BPE merge file inside an installed package (the package is not imported)."""
    for package in VOCAB_PACKAGES:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for folder in (spec.submodule_search_locations or []) if spec else []:
            path = os.path.join(folder, VOCAB_FILE)
            if os.path.isfile(path):
                return path
    raise VocabularyNotFound(f"CLIP's vocabulary {VOCAB_FILE} was not found: install the 'openai-clip' package "
                             "(pip install openai-clip), which ships it")


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table (GPT-2's)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


# CJK Unified Ideographs blocks, which BasicTokenizer surrounds with spaces
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
               (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _normalise(text: str) -> str:
    out = []
    for ch in text:
        cp = ord(ch)
        if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
            out.append(" ")
        elif cp == 0 or cp == 0xFFFD or unicodedata.category(ch).startswith("C"):
            continue
        elif any(lo <= cp <= hi for lo, hi in _CJK_RANGES):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    words = unicodedata.normalize("NFC", "".join(out)).split()
    return " ".join(w.lower() for w in words)


class ClipBPE:
    """The vocabulary and the byte-pair encoder (text -> ids, no start/end tokens)."""

    WORD_PATTERN = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"""
                                 r"""|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
    SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(s) for s in SPECIAL_TOKENS) + ")")

    def __init__(self, path: str | None = None):
        path = path or find_vocabulary()
        with open(path, "rb") as f:
            raw = f.read()
        if hashlib.sha256(raw).hexdigest() != VOCAB_SHA256:
            raise VocabularyNotFound(f"{path} is not CLIP's vocabulary (checksum differs)")
        merges = gzip.decompress(raw).decode("utf-8").split("\n")[1:NUM_MERGES + 1]
        merges = [tuple(m.split()) for m in merges]
        self.byte_encoder = _bytes_to_unicode()
        symbols = list(self.byte_encoder.values())
        symbols += [s + "</w>" for s in symbols]
        symbols += ["".join(m) for m in merges]
        symbols += list(SPECIAL_TOKENS)
        self.encoder = {s: i for i, s in enumerate(symbols)}
        self.decoder = {i: s for s, i in self.encoder.items()}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.cache = {s: s for s in SPECIAL_TOKENS}

    def bpe(self, word: str) -> list[str]:
        if word in self.cache:
            return self.cache[word].split(" ")
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and parts[i] == best[0] and parts[i + 1] == best[1]:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self.cache[word] = " ".join(parts)
        return parts

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self.SPECIAL_SPLIT.split(text):
            if piece in SPECIAL_TOKENS:
                ids.append(SPECIAL_TOKENS[piece])
                continue
            for word in self.WORD_PATTERN.findall(_normalise(piece)):
                mapped = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
                ids.extend(self.encoder.get(t, END_TOKEN) for t in self.bpe(mapped))  # unknown -> unk = end token
        return ids

    def decode_token(self, token: int) -> str:
        return self.decoder.get(token, "")


@functools.lru_cache(maxsize=1)
def default_bpe() -> ClipBPE:
    return ClipBPE()


# -- prompt weighting ----------------------------------------------------------------------
_ESCAPES = (("\\)", "\0\1"), ("\\(", "\0\2"))


def escape_parentheses(text: str) -> str:
    for literal, placeholder in _ESCAPES:
        text = text.replace(literal, placeholder)
    return text


def unescape_parentheses(text: str) -> str:
    for literal, placeholder in _ESCAPES:
        text = text.replace(placeholder, literal[1])
    return text


def split_parentheses(text: str) -> list[str]:
    """Top-level pieces: plain runs and "(...)" spans. A ")" without its "(" only lowers the
    depth count (so later text may stay attached), as in ComfyUI."""
    pieces, current, depth = [], "", 0
    for ch in text:
        if ch == "(":
            if depth == 0:
                if current:
                    pieces.append(current)
                current = ""
            current += ch
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                pieces.append(current + ")")
                current = ""
            else:
                current += ch
        else:
            current += ch
    if current:
        pieces.append(current)
    return pieces


def weighted_segments(text: str, weight: float = 1.0) -> list[tuple[str, float]]:
    """(text, weight) runs of a prompt whose escaped parentheses are already hidden."""
    out = []
    for piece in split_parentheses(text):
        if len(piece) >= 2 and piece[0] == "(" and piece[-1] == ")":
            inner = piece[1:-1]
            w = weight * 1.1
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    w = float(inner[colon + 1:])
                    inner = inner[:colon]
                except ValueError:
                    pass
            out += weighted_segments(inner, w)
        else:
            out.append((piece, weight))
    return out


# -- one encoder's tokenizer ---------------------------------------------------------------
class ClipTokenizer:
    """Text -> 77-token chunks for one CLIP text encoder.

    pad_token: 49407 for CLIP-L (pads with the end token), 0 for OpenCLIP H and bigG.
    embedding_key/width: which vectors of an embedding file this encoder takes.
    """

    def __init__(self, pad_token: int = END_TOKEN, embedding_width: int = 768, embedding_key: str = "clip_l",
                 embedding_lookup: EmbeddingLookup | None = None, max_length: int = CHUNK_LENGTH,
                 bpe: ClipBPE | None = None):
        self.bpe = bpe or default_bpe()
        self.start_token, self.end_token, self.pad_token = START_TOKEN, END_TOKEN, pad_token
        self.embedding_width = embedding_width
        self.embedding_key = embedding_key
        self.embedding_lookup = embedding_lookup
        self.max_length = max_length

    def empty_chunk(self) -> list[tuple]:
        return [(self.start_token, 1.0), (self.end_token, 1.0)] + [(self.pad_token, 1.0)] * (self.max_length - 2)

    def _embedding_group(self, spec: str, weight: float):
        """`spec` is what follows "embedding:" up to the segment end. Returns (vectors or None, leftover text)."""
        words = spec.split()
        if not words:
            return None, ""
        name, leftover = words[0], " ".join(words[1:])
        vectors = self.embedding_lookup(name, self.embedding_width, self.embedding_key)
        if vectors is None and name.strip(",") != name:
            stripped = name.strip(",")
            vectors = self.embedding_lookup(stripped, self.embedding_width, self.embedding_key)
            leftover = f"{name[len(stripped):]} {leftover}"
        if vectors is None:
            log.warning("embedding:%s does not exist, ignoring", name)
            return None, leftover
        if vectors.ndim == 1:
            vectors = vectors.unsqueeze(0)
        return [(vectors[i], weight) for i in range(vectors.shape[0])], leftover

    def groups(self, text: str) -> list[list[tuple]]:
        """The prompt as groups of (token, weight): one per weighted span piece and per embedding."""
        groups = []
        for segment, weight in weighted_segments(escape_parentheses(text)):
            segment = unescape_parentheses(segment)
            first, *rest = re.split(r" embedding:|\nembedding:", segment)
            words = [first] + [EMBEDDING_PREFIX + r for r in rest]
            for word in (w for w in words if w != ""):
                if word.startswith(EMBEDDING_PREFIX) and self.embedding_lookup is not None:
                    vectors, leftover = self._embedding_group(word[len(EMBEDDING_PREFIX):].strip("\n"), weight)
                    if vectors is not None:
                        groups.append(vectors)
                    if leftover == "":
                        continue
                    word = leftover
                groups.append([(t, weight) for t in self.bpe.encode(word)])
        return groups

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False) -> list[list[tuple]]:
        room = self.max_length - 1  # every chunk ends with the end token
        chunks = [[(self.start_token, 1.0, 0)]]
        chunk = chunks[0]
        for word_id, group in enumerate(self.groups(text), start=1):
            split_allowed = len(group) >= MAX_WORD_LENGTH
            while group:
                if len(chunk) + len(group) <= room:
                    chunk.extend((t, w, word_id) for t, w in group)
                    break
                free = room - len(chunk)
                if split_allowed:
                    chunk.extend((t, w, word_id) for t, w in group[:free])
                    group = group[free:]
                    chunk.append((self.end_token, 1.0, 0))
                else:
                    chunk.append((self.end_token, 1.0, 0))
                    chunk.extend([(self.pad_token, 1.0, 0)] * free)
                chunk = [(self.start_token, 1.0, 0)]
                chunks.append(chunk)
        chunk.append((self.end_token, 1.0, 0))
        chunk.extend([(self.pad_token, 1.0, 0)] * (self.max_length - len(chunk)))
        if return_word_ids:
            return chunks
        return [[(t, w) for t, w, _ in c] for c in chunks]

    def untokenize(self, chunk: list[tuple]) -> list[tuple]:
        return [(pair, self.bpe.decode_token(pair[0]) if isinstance(pair[0], int) else "<embedding>")
                for pair in chunk]


# -- the tokenizers of a model family ------------------------------------------------------
FAMILY_TOKENIZERS = {  # encoder key in the token dict -> (pad token, embedding width, embedding key)
    "sd1": {"l": (END_TOKEN, 768, "clip_l")},
    "sd2": {"h": (0, 1024, "clip_h")},
    "sdxl": {"g": (0, 1280, "clip_g"), "l": (END_TOKEN, 768, "clip_l")},
    "sdxl_refiner": {"g": (0, 1280, "clip_g"), "l": (END_TOKEN, 768, "clip_l")},
}


class PromptTokenizer:
    """All tokenizers of one CLIP model: tokenize(text) -> {"l": chunks, ...} as ComfyUI."""

    def __init__(self, family: str, embedding_lookup: EmbeddingLookup | None = None):
        if family not in FAMILY_TOKENIZERS:
            raise ValueError(f"no tokenizer for text-encoder family {family!r}")
        self.family = family
        self.tokenizers = {key: ClipTokenizer(pad, width, emb_key, embedding_lookup)
                           for key, (pad, width, emb_key) in FAMILY_TOKENIZERS[family].items()}

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **_options) -> dict:
        return {key: tok.tokenize_with_weights(text, return_word_ids) for key, tok in self.tokenizers.items()}

    def untokenize(self, chunk):
        return next(iter(self.tokenizers.values())).untokenize(chunk)
