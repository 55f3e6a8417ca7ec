"""Re-batching lists of images and latents (ComfyUI's comfy_extras/nodes_rebatch, V3 nodes)."""
from __future__ import annotations

import torch

from nodes import v3 as io


class ImageRebatch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="RebatchImages", display_name="Rebatch Images", category="image/batch",
                         is_input_list=True,
                         inputs=[io.Image.Input("images"), io.Int.Input("batch_size", default=1, min=1, max=4096)],
                         outputs=[io.Image.Output(is_output_list=True)])

    @classmethod
    def execute(cls, images, batch_size):
        size = batch_size[0]
        singles = [img[i:i + 1] for img in images for i in range(img.shape[0])]
        return io.NodeOutput([torch.cat(singles[i:i + size], dim=0) for i in range(0, len(singles), size)])


class LatentRebatch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="RebatchLatents", display_name="Rebatch Latents", category="latent/batch",
                         is_input_list=True,
                         inputs=[io.Latent.Input("latents"), io.Int.Input("batch_size", default=1, min=1, max=4096)],
                         outputs=[io.Latent.Output(is_output_list=True)])

    @staticmethod
    def _entry(latent, offset):
        samples = latent["samples"]
        b, _, h, w = samples.shape
        mask = latent.get("noise_mask", torch.ones((b, 1, h * 8, w * 8)))
        if mask.shape[0] < b:
            mask = mask.repeat((b - 1) // mask.shape[0] + 1, 1, 1, 1)[:b]
        indices = latent.get("batch_index", [offset + i for i in range(b)])
        return [samples, mask, list(indices)]

    @classmethod
    def execute(cls, latents, batch_size):
        size = batch_size[0]
        out, current, seen = [], None, 0

        def emit(batch):
            out.append({"samples": batch[0], "noise_mask": batch[1], "batch_index": batch[2]})

        for latent in latents:
            nxt = cls._entry(latent, seen)
            seen += len(nxt[2])
            if current is None:
                current = nxt
            elif nxt[0].shape[-2:] != current[0].shape[-2:]:  # another size: flush
                emit([current[0][:size], current[1][:size], current[2][:size]])
                current = nxt
            else:
                current = [torch.cat((current[0], nxt[0])), torch.cat((current[1], nxt[1])), current[2] + nxt[2]]
            while current is not None and current[0].shape[0] > size:
                emit([current[0][:size], current[1][:size], current[2][:size]])
                rest = [current[0][size:], current[1][size:], current[2][size:]]
                current = rest if rest[0].shape[0] > 0 else None
        if current is not None:
            emit([current[0][:size], current[1][:size], current[2][:size]])
        for entry in out:  # an all-ones mask means no mask
            if entry["noise_mask"].mean() == 1.0:
                del entry["noise_mask"]
        return io.NodeOutput(out)


V3_NODES = [LatentRebatch, ImageRebatch]
