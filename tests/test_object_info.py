"""/object_info reproduces ComfyUI's V1 node description shape."""
import pytest

from nodes import registry


class _DemoNode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"count": ("INT", {"default": 3, "min": 1, "max": 9}),
                             "mode": (["a", "b"], {"tooltip": "pick"})},
                "optional": {"extra": ("IMAGE",)},
                "hidden": {"prompt": "PROMPT"}}

    RETURN_TYPES = ("INT", "STRING")
    RETURN_NAMES = ("n", "s")
    FUNCTION = "run"
    CATEGORY = "testing/demo"
    OUTPUT_TOOLTIPS = ("the count", "as text")

    def run(self, count, mode, extra=None):
        return count, str(count)


@pytest.fixture
def demo_node():
    registry.register({"DemoNodeX": _DemoNode}, {"DemoNodeX": "Demo Node X"})
    yield "DemoNodeX"
    registry.NODE_CLASS_MAPPINGS.pop("DemoNodeX", None)
    registry.NODE_DISPLAY_NAME_MAPPINGS.pop("DemoNodeX", None)


async def test_object_info_shape(client, demo_node):
    resp = await client.get("/object_info/DemoNodeX")
    assert resp.status == 200
    info = (await resp.json())["DemoNodeX"]
    assert list(info) == ["input", "input_order", "output", "output_is_list", "output_name", "name",
                          "display_name", "description", "python_module", "category", "output_node",
                          "output_tooltips"]
    assert info["input"]["required"]["count"] == ["INT", {"default": 3, "min": 1, "max": 9}]
    assert info["input"]["required"]["mode"] == [["a", "b"], {"tooltip": "pick"}]
    assert info["input"]["hidden"] == {"prompt": "PROMPT"}
    assert info["input_order"] == {"required": ["count", "mode"], "optional": ["extra"], "hidden": ["prompt"]}
    assert info["output"] == ["INT", "STRING"]
    assert info["output_is_list"] == [False, False]
    assert info["output_name"] == ["n", "s"]
    assert info["display_name"] == "Demo Node X"
    assert info["python_module"] == "nodes"
    assert info["category"] == "testing/demo"
    assert info["output_node"] is False


async def test_object_info_all_and_api_prefix(client, demo_node):
    plain = await (await client.get("/object_info")).json()
    api = await (await client.get("/api/object_info")).json()
    assert "DemoNodeX" in plain and plain == api


async def test_unknown_class_is_empty_object(client):
    resp = await client.get("/object_info/NoSuchNode")
    assert resp.status == 200
    assert await resp.json() == {}


async def test_broken_node_is_skipped(client, demo_node):
    class Broken:
        @classmethod
        def INPUT_TYPES(cls):
            raise RuntimeError("boom")
    registry.register({"BrokenNodeX": Broken})
    try:
        data = await (await client.get("/object_info")).json()
        assert "BrokenNodeX" not in data and "DemoNodeX" in data
    finally:
        registry.NODE_CLASS_MAPPINGS.pop("BrokenNodeX", None)
