"""Latent arithmetic and batch helpers of ComfyUI's comfy_extras.nodes_latent (V3 nodes):
add, subtract, multiply, norm-preserving interpolation, concatenation and cutting along
x / y / t, batching, seed behaviour of a batch, and the experimental latent operations
(Reinhard tonemap, sharpen) applied to a latent or to the CFG difference while sampling."""
from __future__ import annotations

import logging

import torch

from models.resize import common_upscale
from models.sampling.conds import repeat_to_batch_size
from nodes import v3 as io
from nodes.constants import MAX_RESOLUTION
from nodes.image_ops import filter_with_kernel, gaussian_kernel

ADVANCED = "latent/advanced"
OPERATIONS = "latent/advanced/operations"


def match_latent(target_shape, latent: torch.Tensor, repeat_batch: bool = True) -> torch.Tensor:
    """`latent` resized (bilinear, centre-cropped) to the target's spatial size and, unless
    told otherwise, repeated/truncated to its batch size."""
    if latent.shape[1:] != target_shape[1:]:
        latent = common_upscale(latent, target_shape[-1], target_shape[-2], "bilinear", "center")
    return repeat_to_batch_size(latent, target_shape[0]) if repeat_batch else latent


def _with_samples(latent: dict, samples: torch.Tensor) -> dict:
    out = latent.copy()  # keeps noise_mask, batch_index, ...
    out["samples"] = samples
    return out


def _two_latents(node_id, category=ADVANCED, deprecated=False, extra=()):
    return io.Schema(node_id=node_id, category=category, is_deprecated=deprecated,
                     inputs=[io.Latent.Input("samples1"), io.Latent.Input("samples2"), *extra],
                     outputs=[io.Latent.Output()])


def _axis(name: str, ndim: int) -> int:
    """x / y / t (optionally '-' prefixed) as a tensor dimension counted from the end."""
    if "x" in name:
        return ndim - 1
    if "y" in name:
        return ndim - 2
    return ndim - 3


class LatentAdd(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _two_latents("LatentAdd")

    @classmethod
    def execute(cls, samples1, samples2):
        s1 = samples1["samples"]
        return io.NodeOutput(_with_samples(samples1, s1 + match_latent(s1.shape, samples2["samples"])))


class LatentSubtract(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _two_latents("LatentSubtract")

    @classmethod
    def execute(cls, samples1, samples2):
        s1 = samples1["samples"]
        return io.NodeOutput(_with_samples(samples1, s1 - match_latent(s1.shape, samples2["samples"])))


class LatentMultiply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="LatentMultiply", category=ADVANCED, inputs=[
            io.Latent.Input("samples"),
            io.Float.Input("multiplier", default=1.0, min=-10.0, max=10.0, step=0.01)],
            outputs=[io.Latent.Output()])

    @classmethod
    def execute(cls, samples, multiplier):
        return io.NodeOutput(_with_samples(samples, samples["samples"] * multiplier))


def interpolate_by_norm(s1: torch.Tensor, s2: torch.Tensor, ratio: float) -> torch.Tensor:
    """Blend the per-pixel channel directions, then give the result the blended magnitude:
    ratio 1 keeps s1, ratio 0 gives s2. Zero vectors contribute a zero direction."""
    n1 = torch.linalg.vector_norm(s1, dim=1)
    n2 = torch.linalg.vector_norm(s2, dim=1)
    d1, d2 = torch.nan_to_num(s1 / n1), torch.nan_to_num(s2 / n2)
    mixed = d1 * ratio + d2 * (1.0 - ratio)
    direction = torch.nan_to_num(mixed / torch.linalg.vector_norm(mixed, dim=1))
    return direction * (n1 * ratio + n2 * (1.0 - ratio))


class LatentInterpolate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _two_latents("LatentInterpolate", extra=[
            io.Float.Input("ratio", default=1.0, min=0.0, max=1.0, step=0.01)])

    @classmethod
    def execute(cls, samples1, samples2, ratio):
        s1 = samples1["samples"]
        s2 = match_latent(s1.shape, samples2["samples"])
        return io.NodeOutput(_with_samples(samples1, interpolate_by_norm(s1, s2, ratio)))


class LatentConcat(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _two_latents("LatentConcat", extra=[
            io.Combo.Input("dim", options=["x", "-x", "y", "-y", "t", "-t"])])

    @classmethod
    def execute(cls, samples1, samples2, dim):
        s1 = samples1["samples"]
        s2 = repeat_to_batch_size(samples2["samples"], s1.shape[0])
        parts = (s2, s1) if dim.startswith("-") else (s1, s2)
        return io.NodeOutput(_with_samples(samples1, torch.cat(parts, dim=_axis(dim, 0))))


class LatentCut(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="LatentCut", category=ADVANCED, inputs=[
            io.Latent.Input("samples"),
            io.Combo.Input("dim", options=["x", "y", "t"]),
            io.Int.Input("index", default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1),
            io.Int.Input("amount", default=1, min=1, max=MAX_RESOLUTION, step=1)],
            outputs=[io.Latent.Output()])

    @classmethod
    def execute(cls, samples, dim, index, amount):
        s = samples["samples"]
        axis = _axis(dim, s.ndim)
        size = s.shape[axis]
        if index >= 0:  # clamp into the tensor; a negative index counts from the end
            index = min(index, size - 1)
            amount = min(size - index, amount)
        else:
            index = max(index, -size)
            amount = min(-index, amount)
        return io.NodeOutput(_with_samples(samples, torch.narrow(s, axis, index, amount)))


class LatentCutToBatch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="LatentCutToBatch", category=ADVANCED, inputs=[
            io.Latent.Input("samples"),
            io.Combo.Input("dim", options=["t", "x", "y"]),
            io.Int.Input("slice_size", default=1, min=1, max=MAX_RESOLUTION, step=1)],
            outputs=[io.Latent.Output()])

    @classmethod
    def execute(cls, samples, dim, slice_size):
        s = samples["samples"]
        axis = _axis(dim, s.ndim)
        if axis < 2:  # no such axis on this latent (t on a 4-D image latent)
            return io.NodeOutput(samples)
        moved = s.movedim(axis, 1)
        if moved.shape[1] < slice_size:
            slice_size = moved.shape[1]
        else:
            moved = moved[:, :(moved.shape[1] // slice_size) * slice_size]
        cut = moved.reshape([-1, slice_size] + list(moved.shape[2:])).movedim(1, axis)
        return io.NodeOutput(_with_samples(samples, cut))


class LatentBatch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _two_latents("LatentBatch", category="latent/batch", deprecated=True)

    @classmethod
    def execute(cls, samples1, samples2):
        s1 = samples1["samples"]
        s2 = match_latent(s1.shape, samples2["samples"], repeat_batch=False)
        out = _with_samples(samples1, torch.cat((s1, s2), dim=0))
        out["batch_index"] = (samples1.get("batch_index", list(range(s1.shape[0])))
                              + samples2.get("batch_index", list(range(s2.shape[0]))))
        return io.NodeOutput(out)


class LatentBatchSeedBehavior(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="LatentBatchSeedBehavior", category=ADVANCED, inputs=[
            io.Latent.Input("samples"),
            io.Combo.Input("seed_behavior", options=["random", "fixed"], default="fixed")],
            outputs=[io.Latent.Output()])

    @classmethod
    def execute(cls, samples, seed_behavior):
        out = samples.copy()
        if seed_behavior == "random":
            out.pop("batch_index", None)  # every item gets its own noise again
        else:  # every item gets the noise of the first one
            first = out.get("batch_index", [0])[0]
            out["batch_index"] = [first] * samples["samples"].shape[0]
        return io.NodeOutput(out)


class LatentApplyOperation(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="LatentApplyOperation", category=OPERATIONS, is_experimental=True,
                         inputs=[io.Latent.Input("samples"), io.LatentOperation.Input("operation")],
                         outputs=[io.Latent.Output()])

    @classmethod
    def execute(cls, samples, operation):
        return io.NodeOutput(_with_samples(samples, operation(latent=samples["samples"])))


class LatentApplyOperationCFG(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="LatentApplyOperationCFG", category=OPERATIONS, is_experimental=True,
                         inputs=[io.Model.Input("model"), io.LatentOperation.Input("operation")],
                         outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, operation):
        m = model.clone()

        def before_cfg(args):
            out = args["conds_out"]
            if len(out) == 2 and out[1] is not None:  # operate on the guidance direction
                out[0] = operation(latent=out[0] - out[1]) + out[1]
            else:
                out[0] = operation(latent=out[0])
            return out

        m.set_model_sampler_pre_cfg_function(before_cfg)
        return io.NodeOutput(m)


def tonemap_reinhard(latent: torch.Tensor, multiplier: float) -> torch.Tensor:
    """Compress per-pixel channel magnitudes with Reinhard's x/(1+x), the white point at
    (mean + 5 std of the magnitudes) * multiplier; directions are kept."""
    magnitude = (torch.linalg.vector_norm(latent, dim=1) + 1e-10)[:, None]
    direction = latent / magnitude
    white = (torch.std(magnitude, dim=(1, 2, 3), keepdim=True) * 5
             + torch.mean(magnitude, dim=(1, 2, 3), keepdim=True)) * multiplier
    scaled = magnitude / white
    return direction * (scaled / (scaled + 1.0)) * white


def sharpen_latent(latent: torch.Tensor, radius: int, sigma: float, alpha: float) -> torch.Tensor:
    """Unsharp-mask the channel directions (the magnitudes are kept): the Gaussian kernel is
    scaled by -10 alpha and its centre set so the kernel sums to one."""
    magnitude = (torch.linalg.vector_norm(latent, dim=1) + 1e-6)[:, None]
    size = radius * 2 + 1
    kernel = gaussian_kernel(size, sigma, device=latent.device) * (alpha * -10)
    kernel[size // 2, size // 2] = kernel[size // 2, size // 2] - kernel.sum() + 1.0
    sharpened = filter_with_kernel((latent / magnitude).movedim(1, -1), kernel, radius).movedim(-1, 1)
    return magnitude * sharpened


class LatentOperationTonemapReinhard(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="LatentOperationTonemapReinhard", category=OPERATIONS, is_experimental=True,
                         inputs=[io.Float.Input("multiplier", default=1.0, min=0.0, max=100.0, step=0.01)],
                         outputs=[io.LatentOperation.Output()])

    @classmethod
    def execute(cls, multiplier):
        return io.NodeOutput(lambda latent, **kwargs: tonemap_reinhard(latent, multiplier))


class LatentOperationSharpen(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="LatentOperationSharpen", category=OPERATIONS, is_experimental=True, inputs=[
            io.Int.Input("sharpen_radius", default=9, min=1, max=31, step=1),
            io.Float.Input("sigma", default=1.0, min=0.1, max=10.0, step=0.1),
            io.Float.Input("alpha", default=0.1, min=0.0, max=5.0, step=0.01)],
            outputs=[io.LatentOperation.Output()])

    @classmethod
    def execute(cls, sharpen_radius, sigma, alpha):
        return io.NodeOutput(lambda latent, **kwargs: sharpen_latent(latent, sharpen_radius, sigma, alpha))


class ReplaceVideoLatentFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ReplaceVideoLatentFrames", category="latent/batch", inputs=[
            io.Latent.Input("destination", tooltip="The destination latent where frames will be replaced."),
            io.Latent.Input("source", optional=True,
                            tooltip="The source latent providing frames to insert into the destination latent. "
                                    "If not provided, the destination latent is returned unchanged."),
            io.Int.Input("index", default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1,
                         tooltip="The starting latent frame index in the destination latent where the source "
                                 "latent frames will be placed. Negative values count from the end.")],
            outputs=[io.Latent.Output()])

    @classmethod
    def execute(cls, destination, index, source=None):
        if source is None:
            return io.NodeOutput(destination)
        dest = destination["samples"]
        src = source["samples"]
        if dest.ndim < 5 or src.ndim < 5:
            raise ValueError("ReplaceVideoLatentFrames needs video latents [B,C,T,H,W]")
        frames = dest.shape[2]
        index = frames + index if index < 0 else index
        if index > frames or index + src.shape[2] > frames:
            logging.warning("ReplaceVideoLatentFrames: %d source frames at index %d do not fit in %d frames",
                            src.shape[2], index, frames)
            return io.NodeOutput(destination)
        replaced = dest.clone()
        replaced[:, :, index:index + src.shape[2]] = src
        return io.NodeOutput(_with_samples(source, replaced))


V3_NODES = [LatentAdd, LatentSubtract, LatentMultiply, LatentInterpolate, LatentConcat, LatentCut, LatentCutToBatch,
            LatentBatch, LatentBatchSeedBehavior, LatentApplyOperation, LatentApplyOperationCFG,
            LatentOperationTonemapReinhard, LatentOperationSharpen, ReplaceVideoLatentFrames]
