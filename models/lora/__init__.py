"""LoRA and LyCORIS: reading adapter files, mapping their keys to model weights, patching."""
