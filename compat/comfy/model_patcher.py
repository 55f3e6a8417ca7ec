"""`comfy.model_patcher`: packs clone and patch MODEL values (ModelPatcher)."""
from models.model_patcher import ModelPatcher  # noqa: F401
