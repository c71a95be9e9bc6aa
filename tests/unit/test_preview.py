"""Drag previews: marks land where the points are, unmarked pixels are untouched, the mask tints, bad input names itself."""
import pytest
import torch

from comfyui_dragedit.kernels import preview

H, W = 96, 128


def gray(batch=1):
    return torch.full((batch, H, W, 3), 0.5)


def rgb_at(image, x, y):
    return tuple(round(v * 255) for v in image[0, y, x].tolist())


def test_handle_is_red_target_blue_and_far_pixels_untouched():
    images = gray()
    out = preview.draw_drag(images, [[20, 30]], [[100, 70]])
    assert out.shape == images.shape and out.dtype == images.dtype
    assert rgb_at(out, 20, 30) == preview.HANDLE_RGB
    assert rgb_at(out, 100, 70) == preview.TARGET_RGB
    assert torch.equal(out[0, 80:, :10], images[0, 80:, :10])
    assert torch.equal(images, gray()), "the input must not be modified"


def test_arrow_runs_between_the_points():
    out = preview.draw_drag(gray(), [[10, 48]], [[118, 48]])
    assert rgb_at(out, 64, 48) == preview.ARROW_RGB
    assert rgb_at(out, 64, 20) == (128, 128, 128)


def test_every_pair_is_drawn_and_numbered():
    out = preview.draw_drag(gray(), [[10, 10], [10, 60]], [[60, 10], [60, 60]])
    assert rgb_at(out, 10, 60) == preview.HANDLE_RGB and rgb_at(out, 60, 60) == preview.TARGET_RGB
    layer = preview.marks_layer((W, H), [[10, 60]], [[60, 60]])
    label_area = layer[40:56, 14:30, 3]
    assert (label_area > 0).any(), "the number sits up and right of the handle"


def test_mask_tints_the_editable_region_only():
    mask = torch.zeros(H, W)
    mask[:, W // 2:] = 1
    out = preview.draw_drag(gray(2), [[5, 5]], [[6, 6]], mask=mask)
    inside, outside = out[1, 80, 100], out[1, 80, 20]
    assert torch.equal(outside, torch.full((3,), 0.5))
    expected = 0.5 * (1 - preview.MASK_ALPHA) + torch.tensor(preview.MASK_RGB) / 255 * preview.MASK_ALPHA
    assert torch.allclose(inside, expected)


def test_trajectories_draw_a_path_per_point():
    steps = [torch.tensor([[10.0, 80.0]]), torch.tensor([[60.0, 80.0]]), torch.tensor([[110.0, 80.0]])]
    layer = preview.marks_layer((W, H), [[10, 80]], [[110, 20]], trajectories=steps)
    assert layer[80, 85, 3] == 1.0
    assert tuple(round(v * 255) for v in layer[80, 85, :3].tolist()) == preview.TRACK_RGB


def test_batch_dtype_and_device_are_kept():
    images = torch.rand(3, H, W, 3, dtype=torch.float16)
    out = preview.draw_drag(images, [[1, 1]], [[2, 2]])
    assert out.shape == (3, H, W, 3) and out.dtype == torch.float16 and out.device == images.device


@pytest.mark.parametrize("kwargs, words", [
    (dict(images=torch.zeros(H, W, 3)), "images: expected IMAGE"),
    (dict(handles=[[1, 2, 3]]), "handles: expected [N, 2]"),
    (dict(targets=[[1, 2], [3, 4]]), "1 handles but 2 targets"),
    (dict(mask=torch.ones(H, W + 1)), "mask: is 129x96"),
    (dict(mask=torch.ones(2, H, W)), "a batch of 2 masks for 1 images"),
    (dict(trajectories=[torch.zeros(2, 2)]), "trajectories: 2 points per step"),
])
def test_bad_input_raises_value_error_naming_it(kwargs, words):
    args = dict(images=gray(), handles=[[1, 2]], targets=[[3, 4]]) | kwargs
    with pytest.raises(ValueError) as err:
        preview.draw_drag(**args)
    assert words in str(err.value)
