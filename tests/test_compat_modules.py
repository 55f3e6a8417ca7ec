"""The modules custom packs import (compat/): folder_paths, comfy.*, comfy_api, node_helpers,
latent_preview — behaviour packs rely on, over comfyd's own code."""
import json
import os

import pytest
import torch


@pytest.fixture
def folders(base_dir):
    from models import folders
    folders.configure(base=str(base_dir))
    return base_dir


def test_folder_paths_directories_and_model_folders(folders):
    import folder_paths
    assert folder_paths.get_output_directory() == str(folders / "output")
    assert folder_paths.base_path == str(folders)
    assert folder_paths.models_dir == str(folders / "models")
    extra_a, extra_b = folders / "a", folders / "b"
    for d in (extra_a, extra_b):
        d.mkdir()
    folder_paths.add_model_folder_path("checkpoints", str(extra_a))
    folder_paths.add_model_folder_path("checkpoints", str(extra_b), is_default=True)
    paths = folder_paths.get_folder_paths("checkpoints")
    assert paths[0] == str(extra_b) and paths[-1] == str(extra_a)
    folder_paths.add_model_folder_path("checkpoints", str(extra_b))  # known: keeps its place
    assert folder_paths.get_folder_paths("checkpoints") == paths
    folder_paths.add_model_folder_path("checkpoints", str(extra_a), is_default=True)
    assert folder_paths.get_folder_paths("checkpoints")[:2] == [str(extra_a), str(extra_b)]
    folder_paths.add_model_folder_path("checkpoints", str(extra_b), is_default=True)
    (extra_a / "sub").mkdir()
    (extra_a / "sub" / "m.safetensors").write_bytes(b"x")
    (extra_a / "notes.txt").write_text("not a model")
    assert folder_paths.get_filename_list("checkpoints") == ["sub/m.safetensors"]
    assert folder_paths.get_full_path("checkpoints", "sub/m.safetensors") == str(extra_a / "sub" / "m.safetensors")
    (folders / "outside.safetensors").write_bytes(b"x")
    assert folder_paths.get_full_path("checkpoints", "../outside.safetensors") is None
    with pytest.raises(FileNotFoundError):
        folder_paths.get_full_path_or_raise("checkpoints", "missing.safetensors")
    # a pack registering its own kind, the way IPAdapter-style packs do
    folder_paths.folder_names_and_paths["mykind"] = ([str(extra_b)], folder_paths.supported_pt_extensions)
    (extra_b / "k.pth").write_bytes(b"x")
    assert folder_paths.get_filename_list("mykind") == ["k.pth"]
    # the listing is cached; clearing the cache (as packs do after a download) shows new files
    (extra_b / "k2.pth").write_bytes(b"x")
    folder_paths.filename_list_cache.clear()
    files, dirs, _ = folder_paths.get_filename_list_("mykind")
    assert files == ["k.pth", "k2.pth"] and str(extra_b) in dirs
    assert folder_paths.get_filename_list("unet") == folder_paths.get_filename_list("diffusion_models")


def test_folder_paths_annotations_users_and_types(folders):
    import folder_paths
    (folders / "output" / "x.png").write_bytes(b"x")
    assert folder_paths.get_annotated_filepath("x.png [output]") == str(folders / "output" / "x.png")
    assert folder_paths.get_annotated_filepath("y.png") == str(folders / "input" / "y.png")
    assert folder_paths.exists_annotated_filepath("x.png [output]")
    assert not folder_paths.exists_annotated_filepath("x.png")
    assert folder_paths.get_system_user_directory("cache") == str(folders / "user" / "__cache")
    with pytest.raises(ValueError):
        folder_paths.get_system_user_directory("_x")
    assert folder_paths.get_public_user_directory("__cache") is None
    assert folder_paths.get_public_user_directory("alice") == str(folders / "user" / "alice")
    (folders / "input" / "p" / "q").mkdir(parents=True)
    assert folder_paths.get_input_subfolders() == ["p", "p/q"]
    files = ["a.png", "b.mp4", "c.wav", "d.fbx", "e.webp", "f.unknownext", "g.txt"]
    assert folder_paths.filter_files_content_types(files, ["image"]) == ["a.png", "e.webp"]
    assert folder_paths.filter_files_content_types(files, ["video", "audio", "model"]) == ["b.mp4", "c.wav", "d.fbx"]


def test_folder_paths_save_image_path_counter(folders):
    import folder_paths
    out = str(folders / "output")
    folder, name, counter, sub, prefix = folder_paths.get_save_image_path("runs/img", out, 64, 32)
    assert (folder, name, counter, sub) == (os.path.join(out, "runs"), "img", 1, "runs")
    for n in (1, 7):
        open(os.path.join(folder, f"img_{n:05}_.png"), "wb").close()
    open(os.path.join(folder, "img2_00050_.png"), "wb").close()  # another prefix does not count
    assert folder_paths.get_save_image_path("runs/img", out)[2] == 8
    assert folder_paths.get_save_image_path("%width%x%height%", out, 64, 32)[1] == "64x32"
    with pytest.raises(Exception):
        folder_paths.get_save_image_path("../escape", out)


def test_model_management_interrupt_and_devices(make_args):
    import comfy.model_management as mm
    from server.app import create_app
    create_app(make_args())  # --cpu
    assert mm.get_torch_device() == torch.device("cpu") and mm.cpu_mode()
    assert mm.vram_state == mm.VRAMState.DISABLED
    assert mm.intermediate_device() == torch.device("cpu")
    assert mm.get_free_memory() > 0 and mm.get_total_memory() >= mm.get_free_memory()
    mm.interrupt_current_processing()
    assert mm.processing_interrupted()
    with pytest.raises(mm.InterruptProcessingException):
        mm.throw_exception_if_processing_interrupted()
    assert not mm.processing_interrupted()  # raising clears the flag
    mm.interrupt_current_processing(False)
    assert mm.force_channels_last() is False
    create_app(make_args("--force-channels-last"))
    assert mm.force_channels_last() is True
    create_app(make_args())


def test_utils_progress_hook_and_files(tmp_path):
    import comfy.utils
    from models import progress
    seen = []
    previous = progress.get_progress_hook()
    comfy.utils.set_progress_bar_global_hook(lambda v, t, preview, node_id=None, **kw: seen.append((v, t)))
    try:
        assert comfy.utils.PROGRESS_BAR_HOOK is not None
        bar = comfy.utils.ProgressBar(4)
        bar.update(1)
        bar.update_absolute(3)
        bar.update(5)  # clamped to the total
    finally:
        progress.set_progress_hook(previous)
    assert seen == [(1, 4), (3, 4), (4, 4)]
    sd = {"model.a": torch.arange(4.0), "model.b": torch.ones(2, 2, dtype=torch.float16)}
    path = str(tmp_path / "w.safetensors")
    comfy.utils.save_torch_file(sd, path, metadata={"k": "v"})
    loaded, meta = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
    assert meta == {"k": "v"} and torch.equal(loaded["model.a"], sd["model.a"])
    torch.save({"state_dict": sd}, str(tmp_path / "w.ckpt"))
    assert set(comfy.utils.load_torch_file(str(tmp_path / "w.ckpt"))) == {"model.a", "model.b"}
    moved = comfy.utils.state_dict_prefix_replace(dict(sd), {"model.": "diffusion."})
    assert set(moved) == {"diffusion.a", "diffusion.b"}
    assert comfy.utils.calculate_parameters(sd, "model.") == 8
    assert comfy.utils.weight_dtype({**sd, "model.c": torch.zeros(3)}) == torch.float32
    img = torch.rand(1, 3, 8, 8)
    assert comfy.utils.common_upscale(img, 16, 4, "bilinear", "disabled").shape == (1, 3, 4, 16)


def test_comfy_types_io_matching():
    from comfy.comfy_types import IO, ComfyNodeABC, InputTypeDict  # noqa: F401
    assert not (IO.ANY != "IMAGE") and not (IO.NUMBER != "INT") and not (IO.NUMBER != "FLOAT")
    assert IO.INT != "FLOAT" and IO.IMAGE == "IMAGE" and str(IO.MASK) == "MASK"
    assert {IO.LATENT: 1}["LATENT"] == 1


def test_sampling_helpers():
    import comfy.sample
    import comfy.samplers
    import node_helpers
    assert "euler" in comfy.samplers.KSampler.SAMPLERS and "karras" in comfy.samplers.KSampler.SCHEDULERS
    assert "ddim" not in comfy.samplers.KSAMPLER_NAMES
    latent = torch.zeros(2, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 42)
    assert torch.equal(noise, torch.randn(latent.shape, generator=torch.manual_seed(42)))
    # batch_index picks per-sample noise: index 1 alone equals the second of a two-draw sequence
    generator = torch.manual_seed(7)
    draws = [torch.randn([1, 4, 8, 8], generator=generator) for _ in range(2)]
    assert torch.equal(comfy.sample.prepare_noise(latent[:1], 7, [1]), draws[1])
    cond = [[torch.zeros(1, 2, 3), {"a": 1}]]
    out = node_helpers.conditioning_set_values(cond, {"strength": 0.5})
    assert out[0][1] == {"a": 1, "strength": 0.5} and cond[0][1] == {"a": 1}
    import nodes
    assert callable(nodes.common_ksampler) and nodes.MAX_RESOLUTION >= 8192


async def test_cli_args_and_object_info_names(aiohttp_client, make_args):
    from server.app import create_app
    c = await aiohttp_client(create_app(make_args("--preview-size", "256")))
    from comfy.cli_args import LatentPreviewMethod, args
    assert args.preview_size == 256 and args.preview_method == LatentPreviewMethod.NoPreviews
    import comfy.samplers
    info = await (await c.get("/object_info/KSampler")).json()
    required = info["KSampler"]["input"]["required"]
    assert required["sampler_name"][0] == comfy.samplers.KSampler.SAMPLERS
    assert required["scheduler"][0] == comfy.samplers.KSampler.SCHEDULERS


def test_v3_class_speaks_v1():
    """A V3 node gets the class attributes the executor and /object_info read."""
    from comfy_api.latest import io

    class Pick(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id="Pick", category="t", is_output_node=True,
                             inputs=[io.Combo.Input("which", options=["a", "b"]),
                                     io.Image.Input("image", optional=True, lazy=True)],
                             outputs=[io.String.Output("picked", is_output_list=True)])

        @classmethod
        def check_lazy_status(cls, which, image=None):
            return ["image"] if which == "b" and image is None else []

        @classmethod
        def fingerprint_inputs(cls, which, image=None):
            return which

        @classmethod
        def execute(cls, which, image=None):
            return io.NodeOutput([which], ui={"text": [which]})

    types = Pick.INPUT_TYPES()
    assert types["required"]["which"][0] == "COMBO" and types["required"]["which"][1]["options"] == ["a", "b"]
    assert types["optional"]["image"][1]["lazy"] is True
    assert "prompt" in types["hidden"] and "extra_pnginfo" in types["hidden"]
    assert Pick.RETURN_TYPES == ("STRING",) and Pick.RETURN_NAMES == ("picked",)
    assert Pick.OUTPUT_IS_LIST == (True,) and Pick.OUTPUT_NODE is True and Pick.CATEGORY == "t"
    assert callable(getattr(Pick, Pick.FUNCTION)) and Pick.IS_CHANGED(which="a") == "a"
    assert Pick.check_lazy_status(which="b") == ["image"]
    info = Pick.GET_NODE_INFO_V1()
    assert info["name"] == "Pick" and info["output_is_list"] == [True] and info["output_node"] is True
    assert json.loads(json.dumps(info))["input_order"] == {"required": ["which"], "optional": ["image"],
                                                           "hidden": ["prompt", "extra_pnginfo"]}


async def test_latent_preview_callback_reports_steps(tmp_path):
    import latent_preview
    from models import progress
    seen = []
    previous = progress.get_progress_hook()
    progress.set_progress_hook(lambda v, t, preview=None, node_id=None, **kw: seen.append((v, t, preview)))

    class FakeFormat:  # what the callback reads of a model's latent format
        latent_rgb_factors = None
        latent_rgb_factors_bias = None
        taesd_decoder_name = None

    class Model:
        class model:
            latent_format = FakeFormat()
    try:
        x0 = {}
        callback = latent_preview.prepare_callback(Model(), 3, x0)
        for step in range(3):
            callback(step, torch.full((1, 4, 2, 2), float(step)), None, 3)
    finally:
        progress.set_progress_hook(previous)
    assert [(v, t) for v, t, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    assert x0["x0"][0, 0, 0, 0] == 2.0


def test_comfy_extras_modules_from_the_registry():
    """Packs import core classes from comfy_extras.nodes_<x>; the module offers the classes
    /object_info reports under that python_module, and nothing else exists."""
    import nodes  # noqa: F401  (built-ins registered)
    from comfy_extras.nodes_mask import MaskComposite
    import comfy_extras.nodes_mask as mask_module
    from nodes.registry import NODE_CLASS_MAPPINGS, node_info
    assert MaskComposite is NODE_CLASS_MAPPINGS["MaskComposite"]
    assert node_info("MaskComposite")["python_module"] == "comfy_extras.nodes_mask"
    assert set(mask_module.NODE_CLASS_MAPPINGS) == {
        k for k in NODE_CLASS_MAPPINGS if node_info(k)["python_module"] == "comfy_extras.nodes_mask"}
    with pytest.raises(ModuleNotFoundError):
        import comfy_extras.nodes_not_a_module  # noqa: F401
    with pytest.raises(ImportError):
        from comfy_extras.nodes_mask import NotANode  # noqa: F401


def test_v3_hooks_inherited_from_a_parent_bind_to_the_subclass():
    """A V3 node that inherits validate_inputs / check_lazy_status from a parent node class
    gets them as V1 hooks bound to itself (custom packs subclass each other's nodes)."""
    from comfy_api.latest import io

    class Parent(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id=cls.__name__, inputs=[io.Int.Input("a", lazy=True)], outputs=[io.Int.Output()])

        @classmethod
        def execute(cls, a):
            return io.NodeOutput(a)

        @classmethod
        def validate_inputs(cls, a):
            return cls.__name__

        @classmethod
        def check_lazy_status(cls, a=None):
            return [cls.__name__]

    class Child(Parent):
        pass

    class Override(Child):
        @classmethod
        def check_lazy_status(cls, a=None):
            return ["override:" + cls.__name__]

    class GrandChild(Override):
        pass

    assert Child.VALIDATE_INPUTS(a=1) == "Child" and GrandChild.VALIDATE_INPUTS(a=1) == "GrandChild"
    assert Child.check_lazy_status(a=1) == ["Child"]
    assert GrandChild.check_lazy_status(a=1) == ["override:GrandChild"]
    assert not hasattr(io.ComfyNode, "VALIDATE_INPUTS") and not hasattr(io.ComfyNode, "IS_CHANGED")


def test_comfy_clip_vision_loads_a_tower_for_packs(tmp_path):
    import torch
    from safetensors.torch import save_file

    import comfy.clip_vision
    from tiny_checkpoints import LAYOUT_DIR
    if not os.path.isdir(LAYOUT_DIR):
        pytest.skip("oracle layouts not available")
    import tiny_clip_vision
    path = str(tmp_path / "vit.safetensors")
    save_file(tiny_clip_vision.tiny_vision("vit_l", seed=1), path)
    model = comfy.clip_vision.load(path)
    out = model.encode_image(torch.rand(1, 40, 50, 3))
    assert out["image_embeds"].shape == out.image_embeds.shape and out.image_embeds.shape[0] == 1
    assert torch.equal(comfy.clip_vision.load_clipvision_from_sd(
        comfy.clip_vision.load_clip_vision(path).get_sd()).encode_image(torch.zeros(1, 8, 8, 3)).image_embeds,
        model.encode_image(torch.zeros(1, 8, 8, 3)).image_embeds)
