"""Alpha compositing nodes of ComfyUI's comfy_extras/nodes_compositing (V3 schema nodes):
Porter-Duff operators, and splitting/joining an image's alpha channel. Masks are 1 - alpha."""
from __future__ import annotations

from enum import Enum

import torch

from nodes import v3 as io
from nodes.image_ops import resize_image, resize_mask


class PorterDuffMode(Enum):
    ADD = 0
    CLEAR = 1
    DARKEN = 2
    DST = 3
    DST_ATOP = 4
    DST_IN = 5
    DST_OUT = 6
    DST_OVER = 7
    LIGHTEN = 8
    MULTIPLY = 9
    OVERLAY = 10
    SCREEN = 11
    SRC = 12
    SRC_ATOP = 13
    SRC_IN = 14
    SRC_OUT = 15
    SRC_OVER = 16
    XOR = 17


def _union(sa, da):
    return sa + da - sa * da


def _premultiplied_op(mode: PorterDuffMode, s, sa, d, da):
    """(colour, alpha) of one operator on premultiplied colours s, d with alphas sa, da."""
    M = PorterDuffMode
    if mode == M.ADD:
        return torch.clamp(s + d, 0, 1), torch.clamp(sa + da, 0, 1)
    if mode == M.CLEAR:
        return torch.zeros_like(d), torch.zeros_like(da)
    if mode == M.DARKEN:
        return (1 - da) * s + (1 - sa) * d + torch.min(s, d), _union(sa, da)
    if mode == M.LIGHTEN:
        return (1 - da) * s + (1 - sa) * d + torch.max(s, d), _union(sa, da)
    if mode == M.DST:
        return d, da
    if mode == M.DST_ATOP:
        return sa * d + (1 - da) * s, sa
    if mode == M.DST_IN:
        return d * sa, sa * da
    if mode == M.DST_OUT:
        return (1 - sa) * d, (1 - sa) * da
    if mode == M.DST_OVER:
        return d + (1 - da) * s, da + (1 - da) * sa
    if mode == M.MULTIPLY:
        return s * d, sa * da
    if mode == M.OVERLAY:
        return torch.where(2 * d < da, 2 * s * d, sa * da - 2 * (da - s) * (sa - d)), _union(sa, da)
    if mode == M.SCREEN:
        return s + d - s * d, _union(sa, da)
    if mode == M.SRC:
        return s, sa
    if mode == M.SRC_ATOP:
        return da * s + (1 - sa) * d, da
    if mode == M.SRC_IN:
        return s * da, sa * da
    if mode == M.SRC_OUT:
        return (1 - da) * s, (1 - da) * sa
    if mode == M.SRC_OVER:
        return s + (1 - sa) * d, sa + (1 - sa) * da
    if mode == M.XOR:
        return (1 - da) * s + (1 - sa) * d, (1 - da) * sa + (1 - sa) * da
    return None, None


def porter_duff_composite(src_image, src_alpha, dst_image, dst_alpha, mode: PorterDuffMode):
    """Composite [H,W,C] images whose alphas are given as masks ([H,W,1], 1 = transparent);
    returns (straight-alpha image, mask)."""
    src_alpha, dst_alpha = 1 - src_alpha, 1 - dst_alpha
    image, alpha = _premultiplied_op(mode, src_image * src_alpha, src_alpha, dst_image * dst_alpha, dst_alpha)
    if image is None:
        return None, None
    image = torch.where(alpha > 1e-5, image / alpha, torch.zeros_like(image))
    return torch.clamp(image, 0, 1), 1 - alpha


def _fit(t, height, width):
    """A [H,W,C] tensor resized (bicubic, centre crop) to height x width."""
    return resize_image(t.unsqueeze(0), width, height, "bicubic", "center").squeeze(0)


class PorterDuffImageComposite(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="PorterDuffImageComposite", display_name="Porter-Duff Image Composite",
                         category="mask/compositing",
                         inputs=[io.Image.Input("source"), io.Mask.Input("source_alpha"),
                                 io.Image.Input("destination"), io.Mask.Input("destination_alpha"),
                                 io.Combo.Input("mode", options=[m.name for m in PorterDuffMode],
                                                default=PorterDuffMode.DST.name)],
                         outputs=[io.Image.Output(), io.Mask.Output()])

    @classmethod
    def execute(cls, source, source_alpha, destination, destination_alpha, mode):
        n = min(len(source), len(source_alpha), len(destination), len(destination_alpha))
        images, alphas = [], []
        for i in range(n):
            src, dst = source[i], destination[i]
            if src.shape[2] != dst.shape[2]:
                raise ValueError("PorterDuffImageComposite: source and destination need the same number of channels")
            src_a, dst_a = source_alpha[i].unsqueeze(2), destination_alpha[i].unsqueeze(2)
            # everything is fitted to the destination image, the source alpha to the destination alpha
            if dst_a.shape[:2] != dst.shape[:2]:
                dst_a = _fit(dst_a, dst.shape[0], dst.shape[1])
            if src.shape != dst.shape:
                src = _fit(src, dst.shape[0], dst.shape[1])
            if src_a.shape != dst_a.shape:
                src_a = _fit(src_a, dst_a.shape[0], dst_a.shape[1])
            image, alpha = porter_duff_composite(src, src_a, dst, dst_a, PorterDuffMode[mode])
            images.append(image)
            alphas.append(alpha.squeeze(2))
        return io.NodeOutput(torch.stack(images), torch.stack(alphas))

    composite = execute  # the pre-V3 method name, still called by custom packs


class SplitImageWithAlpha(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SplitImageWithAlpha", display_name="Split Image with Alpha",
                         category="mask/compositing", inputs=[io.Image.Input("image")],
                         outputs=[io.Image.Output(), io.Mask.Output()])

    @classmethod
    def execute(cls, image):
        rgb = [i[:, :, :3] for i in image]
        alpha = [i[:, :, 3] if i.shape[2] > 3 else torch.ones_like(i[:, :, 0]) for i in image]
        return io.NodeOutput(torch.stack(rgb), 1.0 - torch.stack(alpha))

    split_image_with_alpha = execute


class JoinImageWithAlpha(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="JoinImageWithAlpha", display_name="Join Image with Alpha",
                         category="mask/compositing", inputs=[io.Image.Input("image"), io.Mask.Input("alpha")],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, image, alpha):
        n = min(len(image), len(alpha))
        alpha = 1.0 - resize_mask(alpha, image.shape[1], image.shape[2])
        return io.NodeOutput(torch.stack([torch.cat((image[i][:, :, :3], alpha[i].unsqueeze(2)), dim=2)
                                          for i in range(n)]))

    join_image_with_alpha = execute


V3_NODES = [PorterDuffImageComposite, SplitImageWithAlpha, JoinImageWithAlpha]
