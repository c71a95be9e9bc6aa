"""tools/scenes: procedural scenes for the demo model and drag cases with exact ground truth."""
import math

import numpy as np
import pytest
from PIL import Image

from tools import scenes as S

SOLID_GREY = S.Background("solid", ((128, 128, 128), (128, 128, 128)), 0.0, 0)
RED = S.Fill("solid", ((230, 20, 20), (230, 20, 20)), 0.0, 0.0)
STRIPES = S.Fill("stripes", ((20, 20, 230), (20, 200, 230)), 30.0, 6.0)


def one_object_scene(shape, center=(50.3, 70.8), radius=15.0, rotation=17.0, fill=RED, size=128):
    return S.Scene(size, SOLID_GREY, (S.SceneObject(shape, center, radius, rotation, fill),))


def dilated(region, pixels):
    """bool mask grown by `pixels` in every direction (a square structuring element)."""
    padded = np.pad(region, pixels)
    grown = np.zeros_like(region)
    height, width = region.shape
    for dy in range(2 * pixels + 1):
        for dx in range(2 * pixels + 1):
            grown |= padded[dy:dy + height, dx:dx + width]
    return grown


def random_scenes(count, size=128, separated=False, max_objects=3):
    rng = np.random.default_rng(1234)
    return [S.random_scene(rng, size, max_objects, separated) for _ in range(count)]


# ------------------------------------------------------------------------------------------------------ scenes

def test_same_rng_seed_gives_the_same_scene_and_pixels_and_another_seed_does_not():
    first, again, other = (S.random_scene(np.random.default_rng(seed)) for seed in (7, 7, 8))
    assert first == again and first != other
    (image, masks), (image_again, masks_again) = S.render(first), S.render(again)
    assert np.array_equal(image, image_again)
    assert all(np.array_equal(a, b) for a, b in zip(masks, masks_again))
    assert not np.array_equal(image, S.render(other)[0])


@pytest.mark.parametrize("size", [128, 96])
def test_render_gives_a_uint8_image_and_one_coverage_mask_per_object(size):
    for scene in random_scenes(10, size):
        image, masks = S.render(scene)
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
        assert len(masks) == len(scene.objects) >= 1
        for mask in masks:
            assert mask.shape == (size, size) and mask.dtype == np.float32
            assert mask.min() >= 0 and mask.max() <= 1 and mask.sum() > 0


def test_scenes_use_every_shape_fill_and_background():
    scenes = random_scenes(60)
    objects = [o for s in scenes for o in s.objects]
    assert {o.shape for o in objects} == set(S.SHAPES)
    assert {o.fill.kind for o in objects} == set(S.FILLS)
    assert {s.background.kind for s in scenes} == set(S.BACKGROUNDS)
    assert {len(s.objects) for s in scenes} == {1, 2, 3}
    assert all(10 <= o.radius <= 28 for o in objects)
    assert all(4 <= o.fill.period <= 12 for o in objects if o.fill.kind in ("stripes", "checker"))


@pytest.mark.parametrize("shape", S.SHAPES)
def test_an_unoccluded_objects_mask_is_centred_on_its_center(shape):
    image, (mask,) = S.render(one_object_scene(shape))
    x, y = S.centroid(mask)
    assert math.hypot(x - 50.3, y - 70.8) < 0.3
    assert tuple(image[71, 50]) == (230, 20, 20) and tuple(image[5, 5]) == (128, 128, 128)


def test_a_discs_coverage_is_its_area():
    assert S.render(one_object_scene("disc", radius=12.0))[1][0].sum() == pytest.approx(math.pi * 144, rel=0.02)


def test_random_separated_objects_are_centred_on_their_centers():
    for scene in random_scenes(20, separated=True):
        for obj, mask in zip(scene.objects, S.render(scene)[1]):
            assert math.dist(S.centroid(mask), obj.center) < 1.5


def test_a_later_object_hides_what_it_covers_of_an_earlier_one():
    bottom = S.SceneObject("square", (60.0, 60.0), 20.0, 0.0, RED)
    top = S.SceneObject("disc", (75.0, 60.0), 12.0, 0.0, STRIPES)
    (image, (under, over)), (_, (alone,)) = S.render(S.Scene(128, SOLID_GREY, (bottom, top))), \
        S.render(S.Scene(128, SOLID_GREY, (bottom,)))
    assert under.sum() < alone.sum() - 100
    assert under[60, 75] == 0 and over[60, 75] == 1
    assert np.all(under + over <= 1 + 1e-6)


def test_separated_scenes_have_no_overlapping_masks():
    checked = 0
    for scene in random_scenes(40, separated=True):
        masks = S.render(scene)[1]
        for a in range(len(masks)):
            for b in range(a + 1, len(masks)):
                assert not np.any((masks[a] > 0) & (masks[b] > 0))
                checked += 1
    assert checked > 10


def test_objects_contrast_with_their_background():
    for scene in random_scenes(40):
        background = np.asarray(scene.background.colours, np.float64)
        for obj in scene.objects:
            mean = np.mean(np.asarray(obj.fill.colours, np.float64), axis=0)
            along = np.linspace(0, 1, 101)[:, None]
            nearest = np.min(np.linalg.norm(background[0] + along * (background[1] - background[0]) - mean, axis=1))
            assert nearest >= S.MIN_CONTRAST - 1
            assert S.contrast(obj.fill, scene.background) == pytest.approx(nearest, abs=1.5)


def test_rendered_objects_stand_out_from_the_background():
    for scene in random_scenes(30, separated=True):
        image, masks = S.render(scene)
        pixels = image.astype(np.float64)
        outside = sum(masks) == 0
        for mask in masks:
            inside = pixels[mask > 0.99].mean(axis=0)
            assert np.linalg.norm(inside - pixels[outside].mean(axis=0)) > 40


def test_centroid_weights_by_coverage_and_refuses_an_empty_mask():
    mask = np.zeros((5, 8), np.float32)
    mask[1, 2], mask[3, 6] = 1.0, 3.0
    assert S.centroid(mask) == pytest.approx((5.0, 2.5))
    with pytest.raises(ValueError, match="empty"):
        S.centroid(np.zeros((4, 4), np.float32))


# ------------------------------------------------------------------------------------------------------ moved

@pytest.mark.parametrize("shape", S.SHAPES)
@pytest.mark.parametrize("offset, scale", [((7.0, -3.5), 1.0), ((0, 0), 0.7), ((-10.25, 4.0), 1.4)])
def test_moved_shifts_the_mask_by_the_offset_and_scales_its_area(shape, offset, scale):
    scene = one_object_scene(shape, center=(60.0, 58.0), fill=STRIPES)
    before, after = (S.render(s)[1][0] for s in (scene, S.moved(scene, 0, offset, scale)))
    (x0, y0), (x1, y1) = S.centroid(before), S.centroid(after)
    assert x1 - x0 == pytest.approx(offset[0], abs=1.0) and y1 - y0 == pytest.approx(offset[1], abs=1.0)
    assert after.sum() / before.sum() == pytest.approx(scale ** 2, rel=0.1)


def test_moved_changes_only_the_chosen_object_and_scales_its_paint():
    scene = S.Scene(128, SOLID_GREY, (S.SceneObject("disc", (30.0, 30.0), 12.0, 0.0, RED),
                                      S.SceneObject("star", (90.0, 80.0), 20.0, 10.0, STRIPES)))
    edited = S.moved(scene, -1, (3, 4), 1.2)
    assert edited.objects[0] == scene.objects[0] and edited.background == scene.background
    assert edited.objects[1] == S.SceneObject("star", (93.0, 84.0), 24.0, 10.0,
                                              S.Fill("stripes", STRIPES.colours, 30.0, 6.0 * 1.2))
    with pytest.raises(ValueError, match="positive"):
        S.moved(scene, 0, scale=0)


# ------------------------------------------------------------------------------------------------------ drag cases

CASE_SEEDS = range(8)


@pytest.mark.parametrize("mode", S.MODES)
def test_drag_cases_edit_one_object_inside_the_image_and_nothing_else(mode):
    for seed in CASE_SEEDS:
        case = S.drag_case(seed, mode)
        assert case.mode == mode and case.index == 0 and 1 <= len(case.scene.objects) <= 2
        assert case.image.shape == case.expected.shape == (128, 128, 3) and case.image.dtype == np.uint8
        assert np.array_equal(case.mask, S.render(case.scene)[1][0])
        for mask in (case.mask, case.expected_mask):
            assert mask.sum() > 50
            assert not (mask[:2].any() or mask[-2:].any() or mask[:, :2].any() or mask[:, -2:].any())
        untouched = ~dilated((case.mask > 0) | (case.expected_mask > 0), 2)
        difference = np.abs(case.image.astype(int) - case.expected.astype(int)).max(axis=2)
        assert difference[untouched].max() <= 2
        assert difference[case.mask > 0.5].max() > 10 or difference[case.expected_mask > 0.5].max() > 10


@pytest.mark.parametrize("mode", ["move", "drag"])
def test_move_and_drag_cases_shift_the_object_by_the_offset_from_its_centroid(mode):
    for seed in CASE_SEEDS:
        case = S.drag_case(seed, mode)
        assert case.scale == 1.0 and 12 <= math.hypot(*case.offset) <= 32
        ((hx, hy, tx, ty),) = case.drags
        assert (hx, hy) == pytest.approx(S.centroid(case.mask))
        assert (tx, ty) == pytest.approx((hx + case.offset[0], hy + case.offset[1]))
        assert case.mask[round(hy), round(hx)] > 0.5
        assert S.centroid(case.expected_mask) == pytest.approx((tx, ty), abs=1.0)
        assert case.expected_mask.sum() == pytest.approx(case.mask.sum(), rel=0.02)


def test_resize_cases_scale_the_object_about_its_centre_from_four_edge_points():
    for seed in CASE_SEEDS:
        case = S.drag_case(seed, "resize")
        assert 0.65 <= case.scale <= 0.8 or 1.25 <= case.scale <= 1.5
        assert case.offset == (0.0, 0.0)
        assert case.expected_mask.sum() / case.mask.sum() == pytest.approx(case.scale ** 2, rel=0.06)
        assert S.centroid(case.expected_mask) == pytest.approx(S.centroid(case.mask), abs=1.0)
        (cx, cy), radius = case.scene.objects[0].center, case.scene.objects[0].radius
        assert len(case.drags) == 4
        for (hx, hy, tx, ty), (dx, dy) in zip(case.drags, [(1, 0), (-1, 0), (0, 1), (0, -1)]):
            reach = (hx - cx) * dx + (hy - cy) * dy   # the handle lies on the ray from the centre
            assert (hx - cx, hy - cy) == pytest.approx((dx * reach, dy * reach)) and 0 < reach <= radius + 1e-9
            assert (tx - cx, ty - cy) == pytest.approx(((hx - cx) * case.scale, (hy - cy) * case.scale))
            # the handle is on the visible edge: covered just inside it, bare just outside
            inside, outside = (hx - 1.5 * dx, hy - 1.5 * dy), (hx + 1.5 * dx, hy + 1.5 * dy)
            assert case.mask[round(inside[1]), round(inside[0])] > 0.5
            assert case.mask[round(outside[1]), round(outside[0])] < 0.5


def test_both_scales_occur_and_disc_resize_handles_sit_at_the_radius():
    cases = [S.drag_case(seed, "resize") for seed in range(30)]
    assert any(c.scale < 1 for c in cases) and any(c.scale > 1 for c in cases)
    discs = [c for c in cases if c.scene.objects[0].shape == "disc"]
    assert discs
    for case in discs:
        (cx, cy), radius = case.scene.objects[0].center, case.scene.objects[0].radius
        for hx, hy, _, _ in case.drags:
            assert math.hypot(hx - cx, hy - cy) == pytest.approx(radius)


def test_drag_cases_are_deterministic_in_the_seed():
    first, again, other = S.drag_case(3, "move"), S.drag_case(3, "move"), S.drag_case(4, "move")
    assert first.scene == again.scene and first.drags == again.drags and first.offset == again.offset
    assert np.array_equal(first.expected, again.expected) and np.array_equal(first.image, again.image)
    assert first.scene != other.scene
    assert S.drag_case(3, "drag").scene != first.scene


def test_drag_cases_scale_with_the_image_size():
    case = S.drag_case(0, "move", size=256)
    assert case.image.shape == (256, 256, 3) and 24 <= math.hypot(*case.offset) <= 64
    assert all(20 <= o.radius <= 56 for o in case.scene.objects)


def test_an_unknown_mode_is_refused_naming_the_valid_ones():
    with pytest.raises(ValueError, match="'rotate'; expected one of move, resize, drag"):
        S.drag_case(0, "rotate")


# ------------------------------------------------------------------------------------------------------ training data

def test_training_images_are_deterministic_and_varied():
    images = S.training_images(5, 6, size=64)
    assert images.shape == (6, 64, 64, 3) and images.dtype == np.uint8
    assert np.array_equal(images, S.training_images(5, 6, size=64))
    assert np.array_equal(images[:3], S.training_images(5, 3, size=64))
    assert not np.array_equal(images, S.training_images(6, 6, size=64))
    assert len({image.tobytes() for image in images}) == 6


def test_the_cli_writes_both_grids(tmp_path, capsys):
    S.main(["--grid", str(tmp_path / "grid.png"), "--count", "6", "--size", "32",
            "--cases", str(tmp_path / "cases.png")])
    assert Image.open(tmp_path / "grid.png").size == (4 * 32 + 3 * 2, 2 * 32 + 2)
    assert Image.open(tmp_path / "cases.png").size == (2 * 32 + 2, 6 * 32 + 5 * 2)
    assert "wrote" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------- locating objects

@pytest.mark.parametrize("seed", [0, 3])
def test_locate_object_finds_the_ground_truth_place_and_the_input_place(seed):
    case = S.drag_case(seed, "move")
    found, scale = S.locate_object(case, case.expected)
    assert math.dist(found, S.centroid(case.expected_mask)) < 1.0 and scale == 1.0
    found, _ = S.locate_object(case, case.image)
    assert math.dist(found, S.centroid(case.mask)) < 1.0


def test_locate_object_measures_a_resize_and_survives_blur():
    case = S.drag_case(1, "resize")
    blurred = np.asarray(Image.fromarray(case.expected).resize((32, 32)).resize((128, 128), Image.BILINEAR))
    _, scale = S.locate_object(case, blurred, shift_range=4, scales=np.arange(0.5, 1.61, 0.05))
    assert abs(scale - case.scale) <= 0.1, (scale, case.scale)
