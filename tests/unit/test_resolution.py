"""The official demo's working resolution (dragondiffusion.md §0): area about resolution², sides multiples of 64."""
import pytest
import torch

from comfyui_dragedit.kernels import resolution
from comfyui_dragedit.kernels.errors import ArgumentError


@pytest.mark.parametrize("hw, target, expected", [
    ((512, 512), 768, (768, 768)),          # input_scale 1.5, as the spec's example
    ((768, 768), 768, (768, 768)),
    ((480, 640), 768, (640, 896)),          # k = 768 / sqrt(480 * 640) = 1.386: 665 -> 640, 887 -> 896
    ((100, 3000), 512, (64, 2816)),          # never below one multiple
    ((1024, 1024), 1024, (1024, 1024)),
])
def test_working_size(hw, target, expected):
    assert resolution.working_size(*hw, target) == expected


def test_resize_keeps_range_and_masks_binary():
    image = torch.rand(1, 30, 40, 3)
    out = resolution.resize_image(image, (64, 128))
    assert out.shape == (1, 64, 128, 3) and 0 <= out.min() and out.max() <= 1
    mask = (torch.rand(1, 30, 40) > 0.5).float()
    assert set(resolution.resize_mask(mask, (64, 128)).unique().tolist()) <= {0.0, 1.0}


def test_bad_arguments_name_themselves():
    with pytest.raises(ArgumentError) as err:
        resolution.working_size(64, 64, 32)
    assert err.value.argument == "resolution"
