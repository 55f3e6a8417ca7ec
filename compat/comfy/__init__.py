"""ComfyUI's `comfy` package, as far as custom node packs use it (adapters over comfyd)."""
