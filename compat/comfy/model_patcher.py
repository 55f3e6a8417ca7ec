"""`comfy.model_patcher`: packs clone and patch MODEL values (ModelPatcher)."""
from models.model_patcher import ModelPatcher, set_model_options_patch_replace  # noqa: F401
