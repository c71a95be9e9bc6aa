"""Drag Points in-process: schema, JSON -> DRAG_POINTS, LoadImage's masks, the canvas background, errors."""
import json

import pytest
import torch

from tests.support.comfy_inproc import run_node

H, W = 48, 64


@pytest.fixture(scope="module")
def node(comfy_nodes):
    from comfyui_dragedit.nodes.points import DragEditPoints

    return DragEditPoints


@pytest.fixture(scope="module")
def errors(comfy_nodes):
    from comfyui_dragedit.nodes.errors import DragEditInputError

    return DragEditInputError


def image(batch=1):
    return torch.linspace(0, 1, batch * H * W * 3).reshape(batch, H, W, 3)


def points_json(pairs, size=(W, H)):
    return json.dumps({"version": 1, "image_size": list(size), "pairs": pairs})


def test_schema_is_documented_everywhere(node):
    info = node.GET_NODE_INFO_V1()
    assert info["name"] == "DragEditPoints" and info["display_name"] == "Drag Points Editor"
    assert info["category"] == "DragEdit" and info["description"]
    assert not info["output_node"], "an output node runs beside a broken edit and reports success"
    specs = {**info["input"]["required"], **info["input"]["optional"]}
    assert set(specs) == {"image", "points_json", "mask"}
    assert all(spec[1].get("tooltip") for spec in specs.values())
    assert specs["points_json"][0] == "STRING" and specs["points_json"][1].get("multiline")
    assert info["output"] == ["DRAG_POINTS", "INT", "INT", "FLOAT", "MASK", "IMAGE"]
    assert info["output_name"] == ["points", "offset_x", "offset_y", "scale", "mask", "preview"]
    assert all(info["output_tooltips"])


def test_points_offset_scale_mask_and_preview(node):
    out = run_node(node, image=image(2), points_json=points_json([[10, 20, 30, 25], [40, 20, 30, 35]]))
    points, offset_x, offset_y, scale, mask, shown = out.args
    assert points.pairs == ((10, 20, 30, 25), (40, 20, 30, 35)) and points.image_size == (W, H)
    assert (offset_x, offset_y) == (20, 5)
    assert scale == pytest.approx(10 / 30)
    assert mask.shape == (1, H, W) and mask.dtype == torch.float32 and bool((mask == 1).all())
    assert shown.shape == (2, H, W, 3) and not torch.equal(shown, image(2))
    assert out.block_execution is None


def test_canvas_background_is_the_first_frame_in_temp(node, comfy_nodes):
    import folder_paths
    from PIL import Image

    out = run_node(node, image=image(3), points_json=points_json([[1, 2, 3, 4]]))
    entries = out.ui["dragedit_background"]
    assert len(entries) == 1 and entries[0]["type"] == "temp"
    path = f"{folder_paths.get_temp_directory()}/{entries[0]['subfolder']}/{entries[0]['filename']}"
    with Image.open(path) as saved:
        assert saved.size == (W, H)


def test_loadimage_zero_mask_means_no_mask(node):
    out = run_node(node, image=image(), points_json=points_json([[1, 2, 3, 4]]), mask=torch.zeros(1, 64, 64))
    assert out.args[4].shape == (1, H, W) and bool((out.args[4] == 1).all())


def test_painted_mask_is_resized_to_the_image(node):
    painted = torch.zeros(1, H // 2, W // 2)
    painted[:, :, W // 4:] = 1
    mask = run_node(node, image=image(), points_json=points_json([[1, 2, 3, 4]]), mask=painted).args[4]
    assert mask.shape == (1, H, W)
    assert bool((mask[0, :, W // 2:] == 1).all()) and not bool(mask[0, :, :W // 2].any())


def test_points_drawn_on_a_bigger_image_are_rescaled(node):
    out = run_node(node, image=image(), points_json=points_json([[20, 40, 100, 60]], size=(128, 96)))
    assert out.args[0].pairs == ((10, 20, 50, 30),)
    assert (out.args[1], out.args[2]) == (40, 10)


def test_api_list_is_accepted(node):
    out = run_node(node, image=image(), points_json="[[5, 6], [7, 8]]")
    assert out.args[0].pairs == ((5, 6, 7, 8),)


def test_no_pairs_shows_the_image_and_blocks_consumers_with_the_fix(node):
    out = run_node(node, image=image(), points_json='{"version":1,"image_size":[0,0],"pairs":[]}')
    assert "dragedit_background" in out.ui
    assert out.block_execution.startswith("DragEdit Drag Points Editor: input 'points_json' has no handle -> target pair.")
    assert "Click a handle" in out.block_execution


def test_point_outside_the_image_is_a_dragedit_error(node, errors):
    with pytest.raises(errors) as err:
        run_node(node, image=image(), points_json="[[5, 6], [64, 8]]")
    assert str(err.value).startswith("DragEdit Drag Points Editor: input 'points_json' target (64, 8) of pair 1 is "
                                     "outside the 64x48 image")
    assert isinstance(err.value, ValueError) and "canvas" in err.value.fix


def test_degenerate_second_pair_is_a_dragedit_error(node, errors):
    with pytest.raises(errors, match="second handle lies on the first"):
        run_node(node, image=image(), points_json=points_json([[5, 5, 9, 9], [5, 5, 20, 20]]))


def test_validate_inputs_reports_malformed_json_at_queue_time(node):
    assert node.validate_inputs(points_json='{"version":1,"image_size":[0,0],"pairs":[]}') is True
    assert node.validate_inputs(points_json=None) is True
    message = node.validate_inputs(points_json='{"pairs": [[1, 2, 3')
    assert message.startswith("DragEdit Drag Points Editor: input 'points_json' is not valid JSON")
    assert "pair 1 has a handle but no target" in node.validate_inputs(points_json=points_json([[1, 2]]))
