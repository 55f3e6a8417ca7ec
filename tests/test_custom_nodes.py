"""Custom node packs load unchanged: V1 and V3 packs, web directories, routes, broken packs."""
import hashlib
import json
import os
import textwrap

import pytest

from wsclient import run_prompt

V1_PACK = textwrap.dedent('''
    import folder_paths
    from server import PromptServer
    from aiohttp import web
    from comfy.comfy_types import IO
    import comfy.utils
    from comfy_execution.graph_utils import GraphBuilder

    @PromptServer.instance.routes.get("/mypack/hello")
    async def hello(request):
        return web.json_response({"hello": folder_paths.get_output_directory()})

    class Doubler:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": (IO.INT, {"default": 2})}, "hidden": {"uid": "UNIQUE_ID"}}
        RETURN_TYPES = (IO.INT,)
        FUNCTION = "go"
        CATEGORY = "mypack"
        def go(self, value, uid):
            from comfy_execution.utils import get_executing_context
            assert get_executing_context().node_id == uid
            bar = comfy.utils.ProgressBar(2)
            bar.update(1); bar.update(1)
            PromptServer.instance.send_sync("mypack.event", {"uid": uid})
            return (value * 2,)

    class Shout:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": ("INT",)}}
        RETURN_TYPES = ()
        OUTPUT_NODE = True
        FUNCTION = "go"
        def go(self, value):
            return {"ui": {"text": [f"{value}!"]}}

    NODE_CLASS_MAPPINGS = {"MyDoubler": Doubler, "MyShout": Shout}
    NODE_DISPLAY_NAME_MAPPINGS = {"MyDoubler": "My Doubler"}
    WEB_DIRECTORY = "./js"
''')

V3_PACK = textwrap.dedent('''
    from comfy_api.latest import ComfyExtension, io

    class Triple(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id="V3Triple", display_name="Triple It", category="v3pack",
                             inputs=[io.Int.Input("value", default=1, min=0, max=100)],
                             outputs=[io.Int.Output(display_name="tripled")],
                             hidden=[io.Hidden.unique_id])

        @classmethod
        def validate_inputs(cls, value):
            return True if value != 13 else "unlucky"

        @classmethod
        def execute(cls, value):
            assert cls.hidden.unique_id is not None
            return io.NodeOutput(value * 3)

    class Ext(ComfyExtension):
        async def get_node_list(self):
            return [Triple]

    async def comfy_entrypoint():
        return Ext()
''')


@pytest.fixture
async def pack_client(aiohttp_client, make_args, base_dir):
    packs = base_dir / "custom_nodes"
    (packs / "mypack" / "js").mkdir(parents=True)
    (packs / "mypack" / "__init__.py").write_text(V1_PACK)
    (packs / "mypack" / "js" / "ui.js").write_text("console.log('hi')")
    (packs / "mypack" / "locales" / "en").mkdir(parents=True)
    (packs / "mypack" / "locales" / "en" / "main.json").write_text(json.dumps({"greeting": "hi", "list": ["m"]}))
    (packs / "mypack" / "example_workflows").mkdir()
    (packs / "mypack" / "example_workflows" / "demo.json").write_text('{"nodes": [1]}')
    (packs / "mypack" / "subgraphs").mkdir()
    (packs / "mypack" / "subgraphs" / "sg.json").write_text('{"nodes": []}')
    (packs / "v3pack.py").write_text(V3_PACK)
    (packs / "broken.py").write_text("raise RuntimeError('this pack is broken')")
    (packs / "brokendir" / "locales" / "en").mkdir(parents=True)
    (packs / "brokendir" / "__init__.py").write_text("import not_a_module_anywhere")
    (packs / "brokendir" / "locales" / "en" / "main.json").write_text(json.dumps({"list": ["b"], "x": {"y": 1}}))
    (packs / "mypack" / "locales" / "en" / "nodeDefs.json").write_text(json.dumps({"MyDoubler": {"display_name": "D"}}))
    from server.app import create_app
    return await aiohttp_client(create_app(make_args()))


async def test_packs_load_and_describe(pack_client):
    info = await (await pack_client.get("/object_info")).json()
    assert info["MyDoubler"]["display_name"] == "My Doubler"
    assert info["MyDoubler"]["python_module"] == "custom_nodes.mypack"
    assert info["V3Triple"]["python_module"] == "custom_nodes.v3pack"
    assert info["V3Triple"]["input"]["hidden"] == {"unique_id": ["UNIQUE_ID"]}
    assert info["V3Triple"]["output_name"] == ["tripled"]
    assert (await (await pack_client.get("/mypack/hello")).json())["hello"].endswith("output")
    assert (await pack_client.get("/api/mypack/hello")).status == 200


async def test_web_directory_i18n_templates_subgraphs(pack_client):
    assert "/extensions/mypack/ui.js" in await (await pack_client.get("/extensions")).json()
    r = await pack_client.get("/extensions/mypack/ui.js")
    assert r.status == 200 and "console.log" in await r.text()
    en = (await (await pack_client.get("/i18n")).json())["en"]
    # packs in folder order (brokendir, then mypack); lists concatenate, dicts merge
    assert en == {"list": ["b", "m"], "x": {"y": 1}, "greeting": "hi",
                  "nodeDefs": {"MyDoubler": {"display_name": "D"}}}
    assert await (await pack_client.get("/workflow_templates")).json() == {"mypack": ["demo"]}
    r = await pack_client.get("/api/workflow_templates/mypack/demo.json")
    assert r.status == 200 and await r.json() == {"nodes": [1]}
    subgraphs = await (await pack_client.get("/global_subgraphs")).json()
    (sid, entry), = subgraphs.items()
    assert entry == {"source": "custom_node", "name": "sg", "info": {"node_pack": "custom_nodes.mypack"}}
    import folder_paths  # ComfyUI's id: sha256("custom_node" + the file's path)
    sg_file = os.path.join(folder_paths.get_folder_paths("custom_nodes")[0], "mypack", "subgraphs", "sg.json")
    assert sid == hashlib.sha256(f"custom_node{sg_file}".encode()).hexdigest()
    full = await (await pack_client.get(f"/global_subgraphs/{sid}")).json()
    assert full["data"] == '{"nodes": []}'
    assert await (await pack_client.get("/global_subgraphs/nope")).json() is None


async def test_pack_nodes_run(pack_client):
    g = {"1": {"class_type": "V3Triple", "inputs": {"value": 4}},
         "2": {"class_type": "MyDoubler", "inputs": {"value": ["1", 0]}},
         "3": {"class_type": "MyShout", "inputs": {"value": ["2", 0]}}}
    _, events, hist = await run_prompt(pack_client, g)
    assert hist["outputs"]["3"] == {"text": ["24!"]}
    assert ("mypack.event", {"uid": "2"}) in events
    assert [d["value"] for t, d in events if t == "progress"] == [1, 2]
    bad = json.loads(json.dumps(g))
    bad["1"]["inputs"]["value"] = 13
    r = await pack_client.post("/prompt", data=json.dumps({"prompt": bad}))
    body = await r.json()
    assert body["node_errors"]["1"]["errors"][0]["details"] == "value - unlucky"


async def test_disable_all_custom_nodes(aiohttp_client, make_args, base_dir):
    (base_dir / "custom_nodes").mkdir()
    (base_dir / "custom_nodes" / "solo.py").write_text(V3_PACK.replace("V3Triple", "SoloTriple"))
    from server.app import create_app
    c = await aiohttp_client(create_app(make_args("--disable-all-custom-nodes")))
    assert await (await c.get("/object_info/SoloTriple")).json() == {}


async def test_real_pack_replaces_builtin_stand_ins_but_not_core_nodes(aiohttp_client, make_args, base_dir):
    """comfyd ships comfyui_controlnet_aux's HED/Scribble nodes; a user who installs the real
    pack gets the pack's classes for those names, while core nodes stay comfyd's."""
    pack = base_dir / "custom_nodes" / "comfyui_controlnet_aux"
    pack.mkdir(parents=True)
    (pack / "__init__.py").write_text('''
class RealHED:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "from_real_pack": ("BOOLEAN", {"default": True})}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    def run(self, image, from_real_pack):
        return (image,)

NODE_CLASS_MAPPINGS = {"HEDPreprocessor": RealHED, "KSampler": RealHED}
''')
    from nodes import registry
    if "HEDPreprocessor" not in registry.NODE_CLASS_MAPPINGS:
        pytest.skip("built-in HEDPreprocessor not registered")
    from server.app import create_app
    c = await aiohttp_client(create_app(make_args()))
    info = await (await c.get("/object_info")).json()
    assert "from_real_pack" in info["HEDPreprocessor"]["input"]["required"]
    assert "from_real_pack" not in info["KSampler"]["input"]["required"]
    # the next app without the pack has comfyd's own node again
    import shutil
    shutil.rmtree(pack)
    c2 = await aiohttp_client(create_app(make_args()))
    info = await (await c2.get("/object_info/HEDPreprocessor")).json()
    assert "from_real_pack" not in info["HEDPreprocessor"]["input"].get("required", {})
