"""The V3 node schema's socket types (`comfy_api.latest.io`): each type has an Input (with
its widget options, serialised the way /object_info shows them) and an Output."""
from __future__ import annotations

import copy
from enum import Enum
from typing import Any


def prune(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


class FolderType(str, Enum):
    input = "input"
    output = "output"
    temp = "temp"


class UploadType(str, Enum):
    image = "image_upload"
    audio = "audio_upload"
    video = "video_upload"
    model = "file_upload"


class NumberDisplay(str, Enum):
    number = "number"
    slider = "slider"


class RemoteOptions:
    def __init__(self, route: str, refresh_button: bool, control_after_refresh="first", timeout: int = None,
                 max_retries: int = None, refresh: int = None):
        self.route, self.refresh_button, self.control_after_refresh = route, refresh_button, control_after_refresh
        self.timeout, self.max_retries, self.refresh = timeout, max_retries, refresh

    def as_dict(self):
        return prune({"route": self.route, "refresh_button": self.refresh_button,
                      "control_after_refresh": self.control_after_refresh, "timeout": self.timeout,
                      "max_retries": self.max_retries, "refresh": self.refresh})


class Input:
    Parent = None

    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 extra_dict=None, raw_link: bool = None, advanced: bool = None):
        self.id, self.display_name, self.optional, self.tooltip = id, display_name, optional, tooltip
        self.lazy, self.extra_dict, self.rawLink, self.advanced = lazy, extra_dict or {}, raw_link, advanced

    @property
    def io_type(self):
        return self.Parent.io_type

    def get_io_type(self):
        return self.io_type

    def as_dict(self) -> dict:
        return prune({"display_name": self.display_name, "optional": self.optional, "tooltip": self.tooltip,
                      "lazy": self.lazy, "rawLink": self.rawLink, "advanced": self.advanced}) | prune(self.extra_dict)

    def validate(self):
        pass


class WidgetInput(Input):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default: Any = None,
                 socketless: bool = None, widget_type: str = None, force_input: bool = None, extra_dict=None,
                 raw_link=None, advanced=None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, raw_link, advanced)
        self.default, self.socketless, self.widget_type, self.force_input = default, socketless, widget_type, force_input

    def as_dict(self):
        return super().as_dict() | prune({"default": self.default, "socketless": self.socketless,
                                          "widgetType": self.widget_type, "forceInput": self.force_input})

    def get_io_type(self):
        return self.widget_type if self.widget_type is not None else super().get_io_type()


class Output:
    Parent = None

    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list=False):
        self.id = id
        self.display_name = display_name if display_name else id
        self.tooltip, self.is_output_list = tooltip, is_output_list

    @property
    def io_type(self):
        return self.Parent.io_type

    def get_io_type(self):
        return self.io_type

    def as_dict(self):
        return prune({"display_name": self.display_name or self.id, "tooltip": self.tooltip,
                      "is_output_list": self.is_output_list})

    def validate(self):
        pass


class ComfyType:
    Type = Any
    io_type: str = None


class ComfyTypeI(ComfyType):
    class Input(Input):
        pass


class ComfyTypeIO(ComfyTypeI):
    class Output(Output):
        pass


def comfytype(io_type: str, **kwargs):
    """Decorator binding a socket type name to a ComfyType class (with fresh Input/Output copies)."""
    def decorate(cls):
        if not issubclass(cls, ComfyType):
            cls = type(cls.__name__, (cls, ComfyTypeIO), {k: v for k, v in cls.__dict__.items()
                                                         if k not in ("__dict__", "__weakref__")})
        cls.io_type = io_type
        for part in ("Input", "Output"):
            inner = getattr(cls, part, None)
            if inner is not None:
                inner = type(inner.__name__, (inner,), {"Parent": cls})
                setattr(cls, part, inner)
        return cls
    return decorate


def Custom(io_type: str):
    @comfytype(io_type=io_type)
    class CustomType(ComfyTypeIO):
        pass
    return CustomType


@comfytype(io_type="BOOLEAN")
class Boolean(ComfyTypeIO):
    Type = bool

    class Input(WidgetInput):
        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default: bool = None,
                     label_on: str = None, label_off: str = None, socketless=None, force_input=None, extra_dict=None,
                     raw_link=None, advanced=None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link, advanced)
            self.label_on, self.label_off = label_on, label_off

        def as_dict(self):
            return super().as_dict() | prune({"label_on": self.label_on, "label_off": self.label_off})


@comfytype(io_type="INT")
class Int(ComfyTypeIO):
    Type = int

    class Input(WidgetInput):
        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default: int = None,
                     min: int = None, max: int = None, step: int = None, control_after_generate: bool = None,
                     display_mode: NumberDisplay = None, socketless=None, force_input=None, extra_dict=None,
                     raw_link=None, advanced=None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link, advanced)
            self.min, self.max, self.step = min, max, step
            self.control_after_generate, self.display_mode = control_after_generate, display_mode

        def as_dict(self):
            return super().as_dict() | prune({
                "min": self.min, "max": self.max, "step": self.step,
                "control_after_generate": self.control_after_generate,
                "display": self.display_mode.value if self.display_mode else None})


@comfytype(io_type="FLOAT")
class Float(ComfyTypeIO):
    Type = float

    class Input(WidgetInput):
        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default: float = None,
                     min: float = None, max: float = None, step: float = None, round: float = None,
                     display_mode: NumberDisplay = None, socketless=None, force_input=None, extra_dict=None,
                     raw_link=None, advanced=None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link, advanced)
            self.min, self.max, self.step, self.round, self.display_mode = min, max, step, round, display_mode

        def as_dict(self):
            return super().as_dict() | prune({"min": self.min, "max": self.max, "step": self.step,
                                              "round": self.round, "display": self.display_mode})


@comfytype(io_type="STRING")
class String(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, multiline=False,
                     placeholder: str = None, default: str = None, dynamic_prompts: bool = None, socketless=None,
                     force_input=None, extra_dict=None, raw_link=None, advanced=None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link, advanced)
            self.multiline, self.placeholder, self.dynamic_prompts = multiline, placeholder, dynamic_prompts

        def as_dict(self):
            return super().as_dict() | prune({"multiline": self.multiline, "placeholder": self.placeholder,
                                              "dynamicPrompts": self.dynamic_prompts})


@comfytype(io_type="COMBO")
class Combo(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        def __init__(self, id, options=None, display_name=None, optional=False, tooltip=None, lazy=None,
                     default=None, control_after_generate: bool = None, upload: UploadType = None,
                     image_folder: FolderType = None, remote: RemoteOptions = None, socketless=None,
                     extra_dict=None, raw_link=None, advanced=None):
            if isinstance(options, type) and issubclass(options, Enum):
                options = [v.value for v in options]
            if isinstance(default, Enum):
                default = default.value
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, None,
                             extra_dict, raw_link, advanced)
            self.multiselect, self.options = False, options
            self.control_after_generate, self.upload = control_after_generate, upload
            self.image_folder, self.remote = image_folder, remote

        def as_dict(self):
            return super().as_dict() | prune({
                "multiselect": self.multiselect, "options": self.options,
                "control_after_generate": self.control_after_generate,
                **({self.upload.value: True} if self.upload is not None else {}),
                "image_folder": self.image_folder.value if self.image_folder else None,
                "remote": self.remote.as_dict() if self.remote else None})

    class Output(Output):
        def __init__(self, id=None, display_name=None, options=None, tooltip=None, is_output_list=False):
            super().__init__(id, display_name, tooltip, is_output_list)
            self.options = options if options is not None else []


@comfytype(io_type="COMBO")
class MultiCombo(ComfyTypeI):
    class Input(Combo.Input):
        def __init__(self, id, options, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                     placeholder: str = None, chip: bool = None, control_after_generate=None, socketless=None,
                     extra_dict=None, raw_link=None, advanced=None):
            super().__init__(id, options, display_name, optional, tooltip, lazy, default, control_after_generate,
                             socketless=socketless, extra_dict=extra_dict, raw_link=raw_link, advanced=advanced)
            self.multiselect, self.placeholder, self.chip = True, placeholder, chip

        def as_dict(self):
            return super().as_dict() | prune({"multi_select": self.multiselect, "placeholder": self.placeholder,
                                              "chip": self.chip})


_SIMPLE_TYPES = {
    "Image": "IMAGE", "Mask": "MASK", "Latent": "LATENT", "Conditioning": "CONDITIONING", "Sampler": "SAMPLER",
    "Sigmas": "SIGMAS", "Noise": "NOISE", "Guider": "GUIDER", "Clip": "CLIP", "ControlNet": "CONTROL_NET",
    "Vae": "VAE", "Model": "MODEL", "ClipVision": "CLIP_VISION", "ClipVisionOutput": "CLIP_VISION_OUTPUT",
    "StyleModel": "STYLE_MODEL", "Gligen": "GLIGEN", "UpscaleModel": "UPSCALE_MODEL",
    "LatentUpscaleModel": "LATENT_UPSCALE_MODEL", "Audio": "AUDIO", "Video": "VIDEO", "SVG": "SVG",
    "LoraModel": "LORA_MODEL", "LossMap": "LOSS_MAP", "Voxel": "VOXEL", "Mesh": "MESH", "Hooks": "HOOKS",
    "HookKeyframes": "HOOK_KEYFRAMES", "TimestepsRange": "TIMESTEPS_RANGE", "LatentOperation": "LATENT_OPERATION",
    "FlowControl": "FLOW_CONTROL", "Accumulation": "ACCUMULATION", "Photomaker": "PHOTOMAKER", "Point": "POINT",
    "FaceAnalysis": "FACE_ANALYSIS", "BBOX": "BBOX", "SEGS": "SEGS", "AnyType": "*", "MODEL_PATCH": "MODEL_PATCH",
    "AudioEncoder": "AUDIO_ENCODER", "AudioEncoderOutput": "AUDIO_ENCODER_OUTPUT", "Tracks": "TRACKS",
    "Webcam": "WEBCAM", "WanCameraEmbedding": "WAN_CAMERA_EMBEDDING",
}
for _name, _io in _SIMPLE_TYPES.items():
    globals()[_name] = comfytype(io_type=_io)(type(_name, (ComfyTypeIO,), {}))


class MultiType:
    Type = Any

    class Input(Input):
        """Accepts several socket types; an Input given as id supplies the widget."""

        def __init__(self, id, types, display_name=None, optional=False, tooltip=None, lazy=None, extra_dict=None,
                     raw_link=None, advanced=None):
            self.input_override = None
            if isinstance(id, Input):
                self.input_override = copy.copy(id)
                optional = True if id.optional is True else optional
                tooltip = id.tooltip if id.tooltip is not None else tooltip
                display_name = id.display_name if id.display_name is not None else display_name
                lazy = id.lazy if id.lazy is not None else lazy
                id = id.id
                if isinstance(self.input_override, WidgetInput):
                    self.input_override.widget_type = self.input_override.get_io_type()
            super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, raw_link, advanced)
            self._io_types = types

        def get_io_type(self):
            names = [t.io_type for t in self._io_types]
            if self.input_override is not None:
                names.insert(0, self.input_override.get_io_type())
            return ",".join(dict.fromkeys(names))

        def as_dict(self):
            if self.input_override is not None:
                return self.input_override.as_dict() | super().as_dict()
            return super().as_dict()


@comfytype(io_type="COMFY_MATCHTYPE_V3")
class MatchType(ComfyTypeIO):
    class Template:
        def __init__(self, template_id: str, allowed_types=None):
            self.template_id = template_id
            allowed = allowed_types if allowed_types is not None else [AnyType]  # noqa: F821
            self.allowed_types = allowed if isinstance(allowed, (list, tuple)) else [allowed]

        def as_dict(self):
            return {"template_id": self.template_id,
                    "allowed_types": ",".join(t.io_type for t in self.allowed_types)}

    class Input(Input):
        def __init__(self, id, template, display_name=None, optional=False, tooltip=None, lazy=None,
                     extra_dict=None, raw_link=None, advanced=None):
            super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, raw_link, advanced)
            self.template = template

        def as_dict(self):
            return super().as_dict() | {"template": self.template.as_dict()}

    class Output(Output):
        def __init__(self, template, id=None, display_name=None, tooltip=None, is_output_list=False):
            if not id and not display_name:
                display_name = "MATCHTYPE"
            super().__init__(id, display_name, tooltip, is_output_list)
            self.template = template

        def as_dict(self):
            return super().as_dict() | {"template": self.template.as_dict()}
