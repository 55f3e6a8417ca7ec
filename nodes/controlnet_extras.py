"""ControlNet nodes of ComfyUI's comfy_extras/nodes_controlnet.py (V3 schema): choosing the
control type of a ControlNet-Union."""
from __future__ import annotations

from models.controlnet_models import UNION_CONTROLNET_TYPES
from nodes import v3 as io


class SetUnionControlNetType(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SetUnionControlNetType", category="conditioning/controlnet",
                         inputs=[io.ControlNet.Input("control_net"),
                                 io.Combo.Input("type", options=["auto"] + list(UNION_CONTROLNET_TYPES))],
                         outputs=[io.ControlNet.Output()])

    @classmethod
    def execute(cls, control_net, type):
        control_net = control_net.copy()
        number = UNION_CONTROLNET_TYPES.get(type, -1)
        # "auto": no type, the union network reads the hint without a type embedding
        control_net.set_extra_arg("control_type", [number] if number >= 0 else [])
        return io.NodeOutput(control_net)


V3_NODES = [SetUnionControlNetType]
