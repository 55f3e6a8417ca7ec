"""ControlNet nodes (V1 in ComfyUI 0.8.0's nodes.py): load a ControlNet / T2I-Adapter /
Control-LoRA (or a difference ControlNet on a model), and attach it with its hint image to
conditionings. The attached objects are copies; chaining on a conditioning that already has
a control makes the new one add to it (models/controlnet.py)."""
from __future__ import annotations

from models import folders, placement
from models.controlnet_load import load_controlnet
from models.state_dict import ModelFileError


def _load(control_net_name: str, model=None):
    path = folders.get_full_path_or_raise("controlnet", control_net_name)
    try:
        return placement.place_controlnet(load_controlnet(path, model=model))
    except ModelFileError as e:
        raise RuntimeError(f"ERROR: controlnet file is invalid and does not contain a valid controlnet model: {e}") from e


class ControlNetLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"control_net_name": (folders.get_filename_list("controlnet"),)}}

    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "load_controlnet"
    CATEGORY = "loaders"

    def load_controlnet(self, control_net_name):
        return (_load(control_net_name),)


class DiffControlNetLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",),
                             "control_net_name": (folders.get_filename_list("controlnet"),)}}

    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "load_controlnet"
    CATEGORY = "loaders"

    def load_controlnet(self, model, control_net_name):
        return (_load(control_net_name, model),)


def _strength():
    return ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01})


class ControlNetApply:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",),
                             "control_net": ("CONTROL_NET",),
                             "image": ("IMAGE",),
                             "strength": _strength()}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "apply_controlnet"
    DEPRECATED = True
    CATEGORY = "conditioning/controlnet"

    def apply_controlnet(self, conditioning, control_net, image, strength):
        if strength == 0:
            return (conditioning,)
        hint = image.movedim(-1, 1)
        out = []
        for tensor, options in conditioning:
            options = options.copy()
            cnet = control_net.copy().set_cond_hint(hint, strength)
            if "control" in options:
                cnet.set_previous_controlnet(options["control"])
            options["control"] = cnet
            options["control_apply_to_uncond"] = True  # the sampler gives the negative the same control
            out.append([tensor, options])
        return (out,)


class ControlNetApplyAdvanced:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"positive": ("CONDITIONING",),
                             "negative": ("CONDITIONING",),
                             "control_net": ("CONTROL_NET",),
                             "image": ("IMAGE",),
                             "strength": _strength(),
                             "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
                             "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001})},
                "optional": {"vae": ("VAE",)}}

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "apply_controlnet"
    CATEGORY = "conditioning/controlnet"

    def apply_controlnet(self, positive, negative, control_net, image, strength, start_percent, end_percent,
                         vae=None, extra_concat=()):
        if strength == 0:
            return (positive, negative)
        hint = image.movedim(-1, 1)
        # One new control per earlier chain: entries that shared a control keep sharing one,
        # so cond and uncond still batch together.
        made: dict = {}
        out = []
        for conditioning in (positive, negative):
            entries = []
            for tensor, options in conditioning:
                options = options.copy()
                prev = options.get("control")
                key = id(prev)
                if key not in made:
                    cnet = control_net.copy().set_cond_hint(hint, strength, (start_percent, end_percent), vae=vae,
                                                            extra_concat=list(extra_concat))
                    cnet.set_previous_controlnet(prev)
                    made[key] = cnet
                options["control"] = made[key]
                options["control_apply_to_uncond"] = False
                entries.append([tensor, options])
            out.append(entries)
        return (out[0], out[1])


NODE_CLASS_MAPPINGS = {
    "ControlNetApply": ControlNetApply,
    "ControlNetApplyAdvanced": ControlNetApplyAdvanced,
    "ControlNetLoader": ControlNetLoader,
    "DiffControlNetLoader": DiffControlNetLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ControlNetLoader": "Load ControlNet Model",
    "DiffControlNetLoader": "Load ControlNet Model (diff)",
    "ControlNetApply": "Apply ControlNet (OLD)",
    "ControlNetApplyAdvanced": "Apply ControlNet",
}
