"""`comfy_api.latest`: the V3 node schema (io), UI outputs (ui) and ComfyExtension."""
from comfy_api.latest import io, ui  # noqa: F401
from comfy_api.latest.io import ComfyExtension  # noqa: F401

IO, UI = io, ui
