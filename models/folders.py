"""The folders comfyd reads and writes: input/output/temp/user and the model folders.

One process-wide registry, configured once at start-up from the command line
(`configure`), because custom node packs reach it through the `folder_paths`
compatibility module as a global, exactly as they do in ComfyUI.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

# Extensions of weight files (ComfyUI's supported_pt_extensions).
MODEL_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}

# Model folder kinds and the sub-folders of <base>/models they default to.
# Order matters: /models lists the keys in this order.
_DEFAULT_KINDS: list[tuple[str, list[str], set[str] | list[str]]] = [
    ("checkpoints", ["checkpoints"], MODEL_EXTENSIONS),
    ("configs", ["configs"], [".yaml"]),
    ("loras", ["loras"], MODEL_EXTENSIONS),
    ("vae", ["vae"], MODEL_EXTENSIONS),
    ("text_encoders", ["text_encoders", "clip"], MODEL_EXTENSIONS),
    ("diffusion_models", ["unet", "diffusion_models"], MODEL_EXTENSIONS),
    ("clip_vision", ["clip_vision"], MODEL_EXTENSIONS),
    ("style_models", ["style_models"], MODEL_EXTENSIONS),
    ("embeddings", ["embeddings"], MODEL_EXTENSIONS),
    ("diffusers", ["diffusers"], ["folder"]),
    ("vae_approx", ["vae_approx"], MODEL_EXTENSIONS),
    ("controlnet", ["controlnet", "t2i_adapter"], MODEL_EXTENSIONS),
    ("gligen", ["gligen"], MODEL_EXTENSIONS),
    ("upscale_models", ["upscale_models"], MODEL_EXTENSIONS),
    ("latent_upscale_models", ["latent_upscale_models"], MODEL_EXTENSIONS),
    ("custom_nodes", None, set()),  # lives at <base>/custom_nodes
    ("hypernetworks", ["hypernetworks"], MODEL_EXTENSIONS),
    ("photomaker", ["photomaker"], MODEL_EXTENSIONS),
    ("classifiers", ["classifiers"], {""}),
    ("model_patches", ["model_patches"], MODEL_EXTENSIONS),
    ("audio_encoders", ["audio_encoders"], MODEL_EXTENSIONS),
    ("annotators", ["annotators"], MODEL_EXTENSIONS),  # preprocessor weights (HED, ...)
]

LEGACY_NAMES = {"unet": "diffusion_models", "clip": "text_encoders"}


@dataclass
class Folders:
    base: str
    input: str
    output: str
    temp: str
    user: str
    # kind -> (list of absolute paths, set/list of extensions)
    models: dict[str, tuple[list[str], set[str] | list[str]]] = field(default_factory=dict)


_state: Folders | None = None


def configure(base: str | None = None, input: str | None = None, output: str | None = None,
              temp: str | None = None, user: str | None = None) -> Folders:
    """(Re)build the registry. Unset folders default to <base>/<name>."""
    global _state
    base = os.path.abspath(base or os.getcwd())
    models_dir = os.path.join(base, "models")
    kinds = {}
    for kind, subdirs, exts in _DEFAULT_KINDS:
        if subdirs is None:
            paths = [os.path.join(base, "custom_nodes")]
        else:
            paths = [os.path.join(models_dir, s) for s in subdirs]
        kinds[kind] = (paths, set(exts) if isinstance(exts, set) else list(exts))
    _state = Folders(
        base=base,
        input=os.path.abspath(input or os.path.join(base, "input")),
        output=os.path.abspath(output or os.path.join(base, "output")),
        temp=os.path.abspath(temp or os.path.join(base, "temp")),
        user=os.path.abspath(user or os.path.join(base, "user")),
        models=kinds,
    )
    _list_cache.clear()
    return _state


def state() -> Folders:
    if _state is None:
        configure()
    return _state  # type: ignore[return-value]


# --- input/output/temp/user -------------------------------------------------

def get_directory_by_type(type_name: str) -> str | None:
    s = state()
    return {"input": s.input, "output": s.output, "temp": s.temp}.get(type_name)


def annotated_filepath(name: str) -> tuple[str, str | None]:
    """Split 'x.png [output]' into ('x.png', output_dir); no annotation -> (name, None)."""
    for tag in ("output", "input", "temp"):
        suffix = f" [{tag}]"
        if name.endswith(suffix):
            return name[: -len(suffix)], get_directory_by_type(tag)
    return name, None


def get_annotated_filepath(name: str, default_dir: str | None = None) -> str:
    name, base = annotated_filepath(name)
    if base is None:
        base = default_dir if default_dir is not None else state().input
    return os.path.join(base, name)


def exists_annotated_filepath(name: str) -> bool:
    return os.path.exists(get_annotated_filepath(name))


def is_inside(path: str, root: str) -> bool:
    """True when `path` (after resolving symlinks) stays inside `root`."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return os.path.commonpath([real, real_root]) == real_root


# --- model folders ------------------------------------------------------------

def map_legacy(kind: str) -> str:
    return LEGACY_NAMES.get(kind, kind)


def add_model_folder_path(kind: str, path: str, is_default: bool = False) -> None:
    kind = map_legacy(kind)
    models = state().models
    path = os.path.abspath(path)
    if kind not in models:
        models[kind] = ([], set())
    paths = models[kind][0]
    if path in paths:  # as ComfyUI: a known path keeps its place unless it becomes the default
        if is_default:
            paths.remove(path)
            paths.insert(0, path)
    elif is_default:
        paths.insert(0, path)
    else:
        paths.append(path)
    _list_cache.clear()


def get_folder_paths(kind: str) -> list[str]:
    return list(state().models[map_legacy(kind)][0])


def model_kinds() -> list[str]:
    return list(state().models.keys())


_list_cache: dict[str, tuple[float, list[str]]] = {}


def _walk(root: str, exts) -> list[str]:
    out = []
    if not os.path.isdir(root):
        return out
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            if fn.startswith("."):
                continue
            if exts and "" not in exts and os.path.splitext(fn)[1].lower() not in exts:
                continue
            out.append(os.path.relpath(os.path.join(dirpath, fn), root))
    return out


def get_filename_list(kind: str) -> list[str]:
    """Sorted, de-duplicated relative paths of the files of a model folder kind.

    Cached for a second so one /object_info request scans each folder once;
    new files appear on the next request.
    """
    kind = map_legacy(kind)
    now = time.monotonic()
    hit = _list_cache.get(kind)
    if hit and now - hit[0] < 1.0:
        return list(hit[1])
    paths, exts = state().models.get(kind, ([], set()))
    names: set[str] = set()
    for p in paths:
        names.update(_walk(p, {e.lower() for e in exts}))
    result = sorted(names)
    _list_cache[kind] = (now, result)
    return list(result)


def get_full_path(kind: str, filename: str) -> str | None:
    """Absolute path of `filename` inside one of the kind's folders, or None.

    Refuses names that escape the folder (`..`, absolute paths). The check is on the
    name, not the resolved path: symlinked weight files (a common way to share models
    between installs) are followed, as in ComfyUI."""
    kind = map_legacy(kind)
    if kind not in state().models:
        return None
    for root in state().models[kind][0]:
        root = os.path.abspath(root)
        candidate = os.path.abspath(os.path.join(root, os.path.normpath(filename)))
        if os.path.commonpath([candidate, root]) != root or candidate == root:
            continue
        if os.path.isfile(candidate):
            return candidate
    return None


def get_full_path_or_raise(kind: str, filename: str) -> str:
    path = get_full_path(kind, filename)
    if path is None:
        raise FileNotFoundError(
            f"Model in folder '{kind}' with filename '{filename}' not found "
            f"(looked in: {', '.join(get_folder_paths(kind))})")
    return path
