"""Where packs come from and which load: extra_model_paths.yaml, --whitelist-custom-nodes,
built-in nodes kept, pyproject web folders, and real public packs from local mirrors
(ComfyMath; ComfyUI's own testing-pack) loaded unchanged and run over HTTP."""
import asyncio
import json
import os
import subprocess
import tarfile
import io
import textwrap

import pytest

from wsclient import run_prompt

MIRRORS = os.environ.get("COMFYD_MIRRORS", "/work/.mirror")
COMFYMATH = os.path.join(MIRRORS, "evanspearman+ComfyMath", "repo")
COMFYUI = os.path.join(MIRRORS, "pollockjj+ComfyUI", "repo")
CUSTOM_SCRIPTS = os.path.join(MIRRORS, "pythongosssss+ComfyUI-Custom-Scripts", "repo")

# A pack with nodes to show results: INT and any-type values as UI text.
SHOW_PACK = textwrap.dedent('''
    class ShowAny:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": ("*",)}}
        RETURN_TYPES = ()
        OUTPUT_NODE = True
        FUNCTION = "show"
        CATEGORY = "show"
        def show(self, value):
            return {"ui": {"text": [repr(value)]}}

    NODE_CLASS_MAPPINGS = {"ShowAny": ShowAny}
''')


def export_tree(repo: str, subpath: str | None, dest) -> None:
    """Write the files of a bare mirror's HEAD (optionally one folder of it) under `dest`."""
    cmd = ["git", "-C", repo, "archive", "--format=tar", "HEAD"] + ([subpath] if subpath else [])
    data = subprocess.run(cmd, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")


def show_pack(folder) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "showpack.py").write_text(SHOW_PACK)


async def test_extra_model_paths_yaml(aiohttp_client, make_args, base_dir, tmp_path_factory):
    """base_path relative to the yaml's folder, several folders per kind, is_default first,
    legacy kind names, and `custom_nodes` folders whose packs load."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    for d in ("ckpts_a", "ckpts_b", "loras", "packs"):
        (elsewhere / "models" / d).mkdir(parents=True)
    (elsewhere / "models" / "ckpts_a" / "a.safetensors").write_bytes(b"x")
    (elsewhere / "models" / "ckpts_b" / "b.ckpt").write_bytes(b"x")
    (elsewhere / "models" / "loras" / "l.safetensors").write_bytes(b"x")
    (base_dir / "models" / "checkpoints").mkdir()
    (base_dir / "models" / "checkpoints" / "base.safetensors").write_bytes(b"x")
    show_pack(elsewhere / "models" / "packs")
    (elsewhere / "extra.yaml").write_text(textwrap.dedent('''
        mine:
            base_path: models
            checkpoints: |
                ckpts_a
                ckpts_b
            custom_nodes: packs
        first:
            base_path: models
            is_default: true
            loras: loras
            clip: loras
        empty:
    '''))
    from server.app import create_app
    c = await aiohttp_client(create_app(make_args("--extra-model-paths-config", str(elsewhere / "extra.yaml"))))
    assert await (await c.get("/models/checkpoints")).json() == ["a.safetensors", "b.ckpt", "base.safetensors"]
    assert await (await c.get("/models/loras")).json() == ["l.safetensors"]
    import folder_paths
    assert folder_paths.get_folder_paths("loras")[0] == str(elsewhere / "models" / "loras")
    assert folder_paths.get_folder_paths("text_encoders")[0] == str(elsewhere / "models" / "loras")  # legacy "clip"
    assert folder_paths.get_folder_paths("checkpoints")[1:] == [str(elsewhere / "models" / d)
                                                                for d in ("ckpts_a", "ckpts_b")]
    assert (await (await c.get("/object_info/ShowAny")).json())["ShowAny"]["python_module"] == "custom_nodes.showpack"


async def test_default_yaml_in_base_dir_paths_relative_to_it(aiohttp_client, make_args, base_dir):
    (base_dir / "more" / "vae").mkdir(parents=True)
    (base_dir / "more" / "vae" / "v.pt").write_bytes(b"x")
    (base_dir / "extra_model_paths.yaml").write_text("x:\n  vae: more/vae\n")
    from server.app import create_app
    c = await aiohttp_client(create_app(make_args()))
    assert await (await c.get("/models/vae")).json() == ["v.pt"]


async def test_whitelist_and_builtins_kept(aiohttp_client, make_args, base_dir):
    packs = base_dir / "custom_nodes"
    show_pack(packs)
    # a pack that tries to replace a built-in node and adds its own
    (packs / "hijack.py").write_text(textwrap.dedent('''
        class Fake:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {}}
            RETURN_TYPES = ("INT",)
            FUNCTION = "f"
            def f(self):
                return (1,)
        NODE_CLASS_MAPPINGS = {"KSampler": Fake, "HijackOwn": Fake}
    '''))
    (packs / "off.py.disabled").write_text(SHOW_PACK.replace("ShowAny", "OffNode"))
    from server.app import create_app
    c = await aiohttp_client(create_app(make_args("--disable-all-custom-nodes",
                                                  "--whitelist-custom-nodes", "hijack")))
    info = await (await c.get("/object_info")).json()
    assert info["KSampler"]["python_module"] == "nodes" and "model" in info["KSampler"]["input"]["required"]
    assert info["HijackOwn"]["python_module"] == "custom_nodes.hijack"
    assert "ShowAny" not in info and "OffNode" not in info


async def test_pyproject_web_folder(aiohttp_client, make_args, base_dir):
    pack = base_dir / "custom_nodes" / "webby"
    (pack / "dist" / "sub").mkdir(parents=True)
    (pack / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\n")
    (pack / "dist" / "sub" / "main.js").write_text("export const x = 1;")
    (pack / "pyproject.toml").write_text('[project]\nname = "webby-ui"\n[tool.comfy]\nweb = "dist"\n')
    from server.app import create_app
    c = await aiohttp_client(create_app(make_args()))
    assert "/extensions/webby-ui/sub/main.js" in await (await c.get("/extensions")).json()
    r = await c.get("/extensions/webby-ui/sub/main.js")
    assert r.status == 200 and "export const" in await r.text()


@pytest.mark.skipif(not os.path.isdir(COMFYMATH), reason="no local mirror of evanspearman/ComfyMath")
async def test_real_pack_comfymath(aiohttp_client, make_args, base_dir):
    """ComfyMath (Apache-2.0, a package with relative imports of a src/ subpackage) loads and
    runs unchanged; its code is read from the mirror at test time, never committed."""
    packs = base_dir / "custom_nodes"
    export_tree(COMFYMATH, None, packs / "ComfyMath")
    show_pack(packs)
    from server.app import create_app
    c = await aiohttp_client(create_app(make_args()))
    info = await (await c.get("/object_info")).json()
    math_nodes = {k: v for k, v in info.items() if v["python_module"] == "custom_nodes.ComfyMath"}
    assert len(math_nodes) > 40 and all(k.startswith("CM_") for k in math_nodes)
    assert info["CM_IntBinaryOperation"]["display_name"] == "IntBinaryOperation"
    assert "Add" in info["CM_IntBinaryOperation"]["input"]["required"]["op"][0]
    g = {"1": {"class_type": "CM_IntBinaryOperation", "inputs": {"op": "Add", "a": 2, "b": 3}},
         "2": {"class_type": "CM_IntUnaryOperation", "inputs": {"op": "Factorial", "a": ["1", 0]}},
         "3": {"class_type": "CM_IntToFloat", "inputs": {"a": ["2", 0]}},
         "4": {"class_type": "CM_FloatUnaryOperation", "inputs": {"op": "Sqrt", "a": ["3", 0]}},
         "5": {"class_type": "ShowAny", "inputs": {"value": ["2", 0]}},
         "6": {"class_type": "ShowAny", "inputs": {"value": ["4", 0]}}}
    _, events, hist = await run_prompt(c, g)
    assert hist["status"]["status_str"] == "success", events
    assert hist["outputs"]["5"] == {"text": ["120"]}
    assert float(hist["outputs"]["6"]["text"][0]) == pytest.approx(120 ** 0.5)
    bad = json.loads(json.dumps(g))
    bad["1"]["inputs"]["op"] = "Launch"
    body = await (await c.post("/prompt", data=json.dumps({"prompt": bad}))).json()
    assert body["node_errors"]["1"]["errors"][0]["type"] == "value_not_in_list"


@pytest.mark.skipif(not os.path.isdir(CUSTOM_SCRIPTS), reason="no local mirror of ComfyUI-Custom-Scripts")
async def test_real_pack_custom_scripts(aiohttp_client, make_args, base_dir):
    """pysssss' ComfyUI-Custom-Scripts (MIT; routes, a web folder, list outputs, core node
    subclasses) loads unchanged and its text nodes run."""
    from nodes.registry import NODE_CLASS_MAPPINGS
    missing = [n for n in ("LoraLoader", "CheckpointLoaderSimple") if n not in NODE_CLASS_MAPPINGS]
    if missing:
        pytest.skip(f"the pack subclasses core nodes comfyd lacks: {missing}")
    export_tree(CUSTOM_SCRIPTS, None, base_dir / "custom_nodes" / "ComfyUI-Custom-Scripts")
    from server.app import create_app
    c = await aiohttp_client(create_app(make_args()))
    from server.routes.extensions import LOADED_PACKS
    pack = LOADED_PACKS["ComfyUI-Custom-Scripts"]
    assert "ShowText|pysssss" in pack["nodes"] and "StringFunction|pysssss" in pack["nodes"]
    scripts = [u for u in await (await c.get("/extensions")).json() if "/ComfyUI-Custom-Scripts/" in u]
    assert scripts and (await c.get(scripts[0])).status == 200
    assert (await c.get("/pysssss/workflows")).status == 200
    g = {"1": {"class_type": "StringFunction|pysssss",
               "inputs": {"action": "append", "tidy_tags": "yes", "text_a": "a cat ", "text_b": "  a hat"}},
         "2": {"class_type": "ShowText|pysssss", "inputs": {"text": ["1", 0]}}}
    _, events, hist = await run_prompt(c, g)
    assert hist["status"]["status_str"] == "success", events
    assert hist["outputs"]["2"] == {"text": ["a cat, a hat"]}


@pytest.mark.skipif(not os.path.isdir(COMFYUI), reason="no local mirror of ComfyUI")
async def test_comfyui_testing_pack(aiohttp_client, make_args, base_dir, tmp_path_factory):
    """ComfyUI's own tests/execution/testing_nodes/testing-pack, found through the same
    extra_model_paths.yaml ComfyUI's tests use: every node describes itself; a for loop built
    with GraphBuilder (node expansion, rawLink) and comfy_api progress run."""
    src = tmp_path_factory.mktemp("comfyui")
    export_tree(COMFYUI, "tests/execution", src)
    show_pack(base_dir / "custom_nodes")
    from server.app import create_app
    c = await aiohttp_client(create_app(make_args(
        "--extra-model-paths-config", str(src / "tests" / "execution" / "extra_model_paths.yaml"))))
    from server.routes.extensions import LOADED_PACKS
    names = LOADED_PACKS["testing-pack"]["nodes"]
    info = await (await c.get("/object_info")).json()
    assert len(names) > 50 and all(info[n]["python_module"] == "custom_nodes.testing-pack" for n in names)
    g = {"open": {"class_type": "TestForLoopOpen", "inputs": {"remaining": 4, "initial_value1": 0}},
         "add": {"class_type": "TestIntMathOperation",
                 "inputs": {"a": ["open", 2], "b": 3, "operation": "add"}},
         "close": {"class_type": "TestForLoopClose",
                   "inputs": {"flow_control": ["open", 0], "initial_value1": ["add", 0]}},
         "show": {"class_type": "ShowAny", "inputs": {"value": ["close", 0]}}}
    _, events, hist = await run_prompt(c, g)
    assert hist["status"]["status_str"] == "success", events
    assert hist["outputs"]["show"] == {"text": ["12"]}
    g = {"p": {"class_type": "TestSyncProgressUpdate", "inputs": {"value": 7, "sleep_seconds": 0.05}},
         "show": {"class_type": "ShowAny", "inputs": {"value": ["p", 0]}}}
    _, events, hist = await run_prompt(c, g)
    assert hist["outputs"]["show"] == {"text": ["7"]}
    progress = [d for t, d in events if t == "progress_state"]
    assert progress and any(n.get("max") == 1.0 for d in progress for n in d["nodes"].values())


async def test_broken_packs_logged_and_skipped(aiohttp_client, make_args, base_dir, caplog):
    packs = base_dir / "custom_nodes"
    show_pack(packs)
    (packs / "explodes.py").write_text("def f():\n    raise ValueError('boom at import')\nf()\n")
    (packs / "badv3.py").write_text("async def comfy_entrypoint():\n    return object()\n")
    (packs / "nomappings.py").write_text("X = 1\n")
    from server.app import create_app
    with caplog.at_level("INFO"):
        c = await aiohttp_client(create_app(make_args()))
    text = caplog.text
    assert "Traceback" in text and "boom at import" in text and "explodes.py" in text
    assert "did not return a ComfyExtension" in text and "lack of NODE_CLASS_MAPPINGS" in text
    assert (await c.get("/object_info/ShowAny")).status == 200
    assert "ShowAny" in await (await c.get("/object_info/ShowAny")).json()


QUEUEING_PACK = textwrap.dedent('''
    import uuid
    import execution
    from aiohttp import web
    from server import PromptServer

    server = PromptServer.instance
    seen = []

    def tag(body):  # an on_prompt handler may rewrite every submitted body
        seen.append(body.get("client_id"))
        return body
    server.add_on_prompt_handler(tag)

    @server.routes.post("/qpack/queue")
    async def queue_it(request):
        """Queue a prompt the way packs do it themselves."""
        prompt = await request.json()
        prompt_id = str(uuid.uuid4())
        ok, error, outputs, node_errors = await execution.validate_prompt(prompt_id, prompt, None)
        if not ok:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        number = server.number
        server.number += 1
        server.prompt_queue.put((number, prompt_id, prompt, {"client_id": "tester"}, outputs, {}))
        return web.json_response({"prompt_id": prompt_id, "number": number})

    @server.routes.get("/qpack/info")
    async def info(request):
        user_file = server.user_manager.get_request_user_filepath(request, "qpack/x.json")
        return web.json_response({"seen": seen, "user_file": user_file, "web_root": server.web_root,
                                  "supports": server.supports})

    NODE_CLASS_MAPPINGS = {}
''')


async def test_pack_queues_prompts_through_prompt_server(aiohttp_client, make_args, base_dir):
    packs = base_dir / "custom_nodes"
    show_pack(packs)
    (packs / "qpack.py").write_text(QUEUEING_PACK)
    from server.app import create_app
    c = await aiohttp_client(create_app(make_args()))
    g = {"1": {"class_type": "ShowAny", "inputs": {"value": 5}}}
    first = await (await c.post("/prompt", data=json.dumps({"prompt": g, "client_id": "abc"}))).json()
    r = await c.post("/api/qpack/queue", data=json.dumps(g))
    queued = await r.json()
    assert r.status == 200 and queued["number"] == first["number"] + 1
    bad = await c.post("/qpack/queue", data=json.dumps({"1": {"class_type": "Nope", "inputs": {}}}))
    assert bad.status == 400 and (await bad.json())["error"]["type"] == "invalid_prompt"
    for _ in range(100):
        hist = await (await c.get(f"/history/{queued['prompt_id']}")).json()
        if hist:
            break
        await asyncio.sleep(0.05)
    assert hist[queued["prompt_id"]]["outputs"]["1"] == {"text": ["5"]}
    info = await (await c.get("/qpack/info")).json()
    assert info["seen"] == ["abc"] and info["user_file"] == str(base_dir / "user" / "default" / "qpack" / "x.json")
    assert "custom_nodes_from_web" in info["supports"]
    assert info["web_root"] is None or info["web_root"].endswith("static")


PREVIEW_PACK = textwrap.dedent('''
    from PIL import Image
    from server import BinaryEventTypes, PromptServer

    class SendPreview:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"size": ("INT", {"default": 8})}}
        RETURN_TYPES = ()
        OUTPUT_NODE = True
        FUNCTION = "go"
        def go(self, size):
            server = PromptServer.instance
            image = Image.new("RGB", (size, size), (255, 0, 0))
            server.send_sync(BinaryEventTypes.UNENCODED_PREVIEW_IMAGE, ["PNG", image, None], server.client_id)
            server.send_sync(BinaryEventTypes.TEXT, b"raw", server.client_id)
            return {}

    NODE_CLASS_MAPPINGS = {"SendPreview": SendPreview}
''')


async def test_pack_sends_binary_frames(aiohttp_client, make_args, base_dir):
    (base_dir / "custom_nodes").mkdir()
    (base_dir / "custom_nodes" / "previewpack.py").write_text(PREVIEW_PACK)
    from server.app import create_app
    c = await aiohttp_client(create_app(make_args()))
    _, events, hist = await run_prompt(c, {"1": {"class_type": "SendPreview", "inputs": {"size": 8}}})
    frames = [d for t, d in events if t == "binary"]
    assert hist["status"]["status_str"] == "success"
    image_frame = next(f for f in frames if f[:4] == (1).to_bytes(4, "big"))
    assert image_frame[4:8] == (2).to_bytes(4, "big") and image_frame[8:12] == b"\x89PNG"
    from PIL import Image
    assert Image.open(io.BytesIO(image_frame[8:])).size == (8, 8)
    assert (3).to_bytes(4, "big") + b"raw" in frames
