"""DragPoints: the canvas JSON, API lists, bounds, rescaling, grid scaling and the move arrow (style.md §4.3, §4.7)."""
import json
import math

import pytest
import torch

from comfyui_dragedit.kernels import points as P
from comfyui_dragedit.kernels.errors import ArgumentError


def canvas_json(pairs, size=(512, 384), version=1):
    return json.dumps({"version": version, "image_size": list(size), "pairs": pairs})


# ------------------------------------------------------------------------------------------------------ parse

def test_canvas_json_round_trips_pairs_and_size():
    parsed = P.parse_points_json(canvas_json([[10, 20, 30, 40], [100.5, 200, 0, 383]]))
    assert parsed.pairs == ((10.0, 20.0, 30.0, 40.0), (100.5, 200.0, 0.0, 383.0))
    assert parsed.image_size == (512, 384)


def test_default_widget_value_is_empty_and_sizeless():
    assert P.parse_points_json(P.EMPTY_JSON) == P.ParsedPoints((), None)


def test_flat_api_list_alternates_handles_and_targets():
    parsed = P.parse_points_json("[[1, 2], [3, 4], [5, 6], [7, 8]]")
    assert parsed.pairs == ((1, 2, 3, 4), (5, 6, 7, 8)) and parsed.image_size is None


def test_list_of_four_number_pairs_is_accepted():
    assert P.parse_points_json("[[1, 2, 3, 4]]").pairs == ((1, 2, 3, 4),)
    assert P.parse_points_json("[]").pairs == ()


@pytest.mark.parametrize("text, words", [
    ("{not json", "is not valid JSON"),
    ("", "is not valid JSON"),
    ("[[1, 2], [3, 4], [5, 6]]", "3 points"),
    ("[[1, 2], [3, 4, 5, 6]]", "only [x, y] points"),
    ('"hello"', "is a JSON string"),
    ("null", "is a JSON null"),
    ("12", "is a JSON number"),
    (canvas_json([[1, 2]]), "pair 1 has a handle but no target"),
    (canvas_json([[1, 2, 3]]), "pair 1 is [1, 2, 3]"),
    (canvas_json([[1, 2, 3, "x"]]), 'pair 1 holds "x"'),
    (canvas_json([[1, 2, 3, True]]), "pair 1 holds true"),
    (canvas_json([[1, 2, 3, 4]], version=2), "version 2"),
    (canvas_json([[1, 2, 3, 4]], size=(512, 0)), "image_size is [512, 0]"),
    (canvas_json([[1, 2, 3, 4]], size=(-5, 5)), "image_size is [-5, 5]"),
    ('{"version": 1, "image_size": [4, 4]}', 'no "pairs" list'),
    (canvas_json([[1, 2, 512, 4]]), "target (512, 4) of pair 1 is outside the 512x384 image"),
    (canvas_json([[1, -1, 5, 4]]), "handle (1, -1) of pair 1 is outside"),
    (canvas_json([[1, 2, 3, 1e999]]), "not a finite number"),
    (canvas_json([[1, 2, 3, 4]], version=True), "version true"),
    ("[" * 100000, "nested too deeply"),
    ("[" * 5000 + "]" * 5000, "nested too deeply"),
    (f"[[{'9' * 400}, 1, 2, 3]]", "holds 9999999999999999999999999999999999999999..., not a finite number"),
    (f"[[{'9' * 5000}, 1, 2, 3]]", "holds a number longer than"),
])
def test_malformed_input_raises_value_error_naming_the_argument(text, words):
    with pytest.raises(ArgumentError, match="^points_json: ") as err:
        P.parse_points_json(text)
    assert err.value.argument == "points_json" and words in err.value.detail


def test_the_argument_name_is_the_callers():
    with pytest.raises(ValueError, match="^pts: is not valid JSON"):
        P.parse_points_json("{", name="pts")


# ------------------------------------------------------------------------------------------ on the real image

def test_points_keep_their_pixels_on_an_image_of_the_stored_size():
    points = P.points_for_image(P.parse_points_json(canvas_json([[10, 20, 30, 40]])), (512, 384))
    assert points.image_size == (512, 384)
    assert torch.equal(points.handles, torch.tensor([[10.0, 20.0]]))
    assert torch.equal(points.targets, torch.tensor([[30.0, 40.0]]))


def test_points_rescale_by_the_size_ratio_when_the_image_was_resized_upstream():
    parsed = P.parse_points_json(canvas_json([[511, 383, 256, 0]]))
    points = P.points_for_image(parsed, (256, 96))
    assert points.pairs == ((255.5, 95.75, 128.0, 0.0),)
    assert points.image_size == (256, 96)


def test_sizeless_points_are_checked_against_the_actual_image():
    parsed = P.parse_points_json("[[10, 10], [600, 10]]")
    assert len(P.points_for_image(parsed, (640, 480))) == 1
    with pytest.raises(ValueError, match=r"^points_json: target \(600, 10\) of pair 1 is outside the 512x512 image"):
        P.points_for_image(parsed, (512, 512))


def test_no_pairs_is_an_error_on_the_image():
    with pytest.raises(ValueError, match="^points_json: has no handle -> target pair"):
        P.points_for_image(P.parse_points_json(P.EMPTY_JSON), (64, 64))


# ------------------------------------------------------------------------------------------------- payload

def test_payload_is_immutable_hashable_and_hands_out_fresh_tensors():
    points = P.DragPoints(((1, 2, 3, 4),), (8, 8))
    with pytest.raises(AttributeError):
        points.pairs = ()
    handles = points.handles
    handles += 100
    assert torch.equal(points.handles, torch.tensor([[1.0, 2.0]]))
    assert points.handles.dtype == torch.float32 and points.handles.shape == (1, 2)
    assert hash(points) == hash(P.DragPoints(((1.0, 2.0, 3.0, 4.0),), (8, 8)))


@pytest.mark.parametrize("pairs, size, words", [
    ((), (8, 8), "at least one"),
    (((1, 2, 3),), (8, 8), "(hx, hy, tx, ty)"),
    (((1, 2, 3, 8),), (8, 8), "outside the 8x8 image"),
    (((1, 2, 3, 4),), (8, 0), "image_size"),
    (((1, 2, 3, 4),), [8, 8], "image_size"),
])
def test_payload_invariants(pairs, size, words):
    with pytest.raises(ValueError) as err:
        P.DragPoints(pairs, size)
    assert words in str(err.value)


def test_from_tensors_matches_pairs():
    points = P.DragPoints.from_tensors(torch.tensor([[1.0, 2.0], [5.0, 6.0]]),
                                       torch.tensor([[3.0, 4.0], [7.0, 7.5]]), (8, 8))
    assert points.pairs == ((1, 2, 3, 4), (5, 6, 7, 7.5))
    with pytest.raises(ValueError, match="two \\[N, 2\\] tensors"):
        P.DragPoints.from_tensors(torch.zeros(2, 2), torch.zeros(3, 2), (8, 8))


def test_scaled_to_a_grid_is_the_size_ratio_and_stays_half_open():
    points = P.DragPoints(((0, 0, 511, 383), (256, 192, 100, 50)), (512, 384))
    handles, targets = points.scaled_to(48, 64)
    assert handles.dtype == torch.float64
    assert torch.allclose(handles, torch.tensor([[0.0, 0.0], [32.0, 24.0]], dtype=torch.float64))
    assert torch.allclose(targets, torch.tensor([[511 / 8, 383 / 8], [12.5, 6.25]], dtype=torch.float64))
    assert (targets[:, 0] < 64).all() and (targets[:, 1] < 48).all()


@pytest.mark.parametrize("width", [246, 37, 1000])
def test_a_point_at_the_last_sub_pixel_stays_inside_when_rescaled(width):
    """246 * nextafter(246) / 246 rounds to 64.0 in floats: the rescaled point must still be inside the image."""
    x = math.nextafter(width, 0)
    points = P.points_for_image(P.ParsedPoints(((x, 0.0, 0.0, 0.0),), (width, 10)), (64, 64))
    assert 63 < points.pairs[0][0] < 64


def test_resized_maps_back_within_one_pixel():
    points = P.DragPoints(((13, 77, 300, 201),), (320, 240))
    back = points.resized(64, 48).resized(320, 240)
    assert max(abs(a - b) for a, b in zip(back.pairs[0], points.pairs[0])) < 1


# ----------------------------------------------------------------------------------------------- move arrow

def test_one_pair_gives_the_offset_and_unit_scale():
    points = P.DragPoints(((100, 50, 130.4, 20.6),), (256, 256))
    assert points.move_offset() == (30, -29)
    assert points.move_scale() == 1.0


def test_second_pair_sets_the_scale_as_the_ratio_of_spans():
    # the object spans 40 px from the first handle; after the move that point lies 60 px from the first target
    points = P.DragPoints(((100, 100, 120, 110), (140, 100, 120, 170), (1, 1, 2, 2)), (256, 256))
    assert points.move_offset() == (20, 10)
    assert points.move_scale() == pytest.approx(1.5)


@pytest.mark.parametrize("pairs, words", [
    (((10, 10, 20, 20), (10, 10, 30, 30)), "second handle lies on the first"),
    (((10, 10, 20, 20), (30, 30, 20, 20)), "second target lies on the first"),
])
def test_degenerate_scale_raises(pairs, words):
    with pytest.raises(ValueError, match=words):
        P.DragPoints(pairs, (64, 64)).move_scale()


def _runs(mask):
    """Run lengths of 0s and 1s over a 0/1 array in row-major order, starting with 0s (the canvas's mask_rle)."""
    flat = [int(v) for v in mask.flatten().tolist()]
    runs, value, run = [], 0, 0
    for bit in flat:
        if bit == value:
            run += 1
        else:
            runs.append(run)
            value, run = bit, 1
    return runs + [run]


def test_painted_mask_decodes_to_its_pixels_row_major():
    painted = torch.zeros(3, 4)
    painted[0, 3] = painted[1, 0] = painted[1, 1] = painted[2, 2] = 1
    text = json.dumps({"version": 1, "image_size": [4, 3], "pairs": [], "mask_rle": _runs(painted)})
    parsed = P.parse_points_json(text)
    assert _runs(painted) == [3, 3, 4, 1, 1]
    assert torch.equal(parsed.mask, painted)
    assert P.painted_region(parsed, (4, 3)) is parsed.mask


def test_painted_mask_follows_the_image_size_nearest_and_empty_is_none():
    painted = torch.zeros(2, 2)
    painted[0, 1] = 1
    parsed = P.parse_points_json(json.dumps({"image_size": [2, 2], "pairs": [], "mask_rle": _runs(painted)}))
    region = P.painted_region(parsed, (4, 4))
    assert region.shape == (4, 4) and region[:2, 2:].eq(1).all() and region.sum() == 4
    empty = P.parse_points_json(json.dumps({"image_size": [2, 2], "pairs": [], "mask_rle": [4]}))
    assert P.painted_region(empty, (2, 2)) is None
    assert P.parse_points_json(json.dumps({"image_size": [2, 2], "pairs": []})).mask is None


@pytest.mark.parametrize("extra, words", [
    ({"image_size": [0, 0], "mask_rle": [4]}, "needs the image_size"),
    ({"image_size": [2, 2], "mask_rle": [3]}, "covers 3 pixels"),
    ({"image_size": [2, 2], "mask_rle": [2, -1, 3]}, "run lengths"),
    ({"image_size": [2, 2], "mask_rle": "4"}, "run lengths"),
])
def test_malformed_mask_raises_naming_the_argument(extra, words):
    with pytest.raises(ValueError, match=f"points_json: .*{words}"):
        P.parse_points_json(json.dumps({"version": 1, "pairs": [], **extra}))
