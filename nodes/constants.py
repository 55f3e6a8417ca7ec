"""Limits shared by node input specs (ComfyUI's values)."""
MAX_RESOLUTION = 16384
