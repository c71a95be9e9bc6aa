"""Feature taps: presets, the output_block_patch timing, truncation, resizing (dragondiffusion.md §2, §11.9;
gooddrag.md §0), and the PCA preview."""
import pytest
import torch

from comfyui_dragedit.kernels import features

# A toy SD-1.5 decoder on a 768² image (channels / 32): output block k -> (channels, side of its output).
# Blocks 2, 5, 8 end with an upsampler; block 5 is up_blocks[1] (H/16), block 8 is up_blocks[2] (H/8).
H = W = 768
BLOCKS = {0: (40, 12), 1: (40, 12), 2: (40, 24), 3: (40, 24), 4: (40, 24), 5: (40, 48),
          6: (20, 48), 7: (20, 48), 8: (20, 96), 9: (10, 96), 10: (10, 96), 11: (10, 96)}


def run_decoder(recorder):
    """Mimic openaimodel: output_block_patch(h) runs before block k with h = output of block k - 1."""
    ran = []
    gen = torch.Generator().manual_seed(0)
    outputs = {}
    h = torch.randn(1, 40, 12, 12, generator=gen)   # middle block output
    try:
        for k in range(12):
            recorder.observe(k, h)
            channels, side = BLOCKS[k]
            h = torch.randn(1, channels, side, side, generator=gen)
            outputs[k] = h
            ran.append(k)
    except features.StopForward:
        pass
    return ran, outputs


DRAGON_TAP = features.dragon_tap((5, 8), "SD 1.x")
GOODDRAG_TAP = features.gooddrag_tap(8, "SD 1.x")


def test_presets():
    assert DRAGON_TAP.blocks == (5, 8) and DRAGON_TAP.modes == ("nearest", "nearest")
    assert DRAGON_TAP.weights is None, "the method's own layer weights (dragondiffusion.md §2)"
    assert DRAGON_TAP.target_size((768, 768)) == (192, 192) and DRAGON_TAP.family == "SD 1.x"
    assert GOODDRAG_TAP.blocks == (8,) and GOODDRAG_TAP.modes == ("bilinear",)
    assert GOODDRAG_TAP.target_size((512, 512)) == (256, 256)
    assert GOODDRAG_TAP.target_size((512, 768)) == (256, 384)


@pytest.mark.parametrize("kwargs, match", [
    (dict(blocks=(-1,)), "block numbers >= 0"),
    (dict(blocks=()), "empty"),
    (dict(blocks=(8, 8)), "duplicates"),
    (dict(modes=("bicubic",)), "bicubic"),
    (dict(weights=(1.0, 2.0)), "one weight per block"),
    (dict(weights=(float("inf"),)), "finite"),
    (dict(modes=("nearest", "nearest")), "one entry per block"),
    (dict(scale=0.0), "scale"),
])
def test_tap_validation(kwargs, match):
    spec = dict(blocks=(8,), modes=("nearest",), scale=0.5, weights=(1.0,)) | kwargs
    with pytest.raises(ValueError, match=match):
        features.FeatureTap(**spec)


def test_recorder_captures_block_outputs_and_truncates():
    recorder = features.FeatureRecorder(DRAGON_TAP, (H, W))
    ran, outputs = run_decoder(recorder)
    assert ran == list(range(9))           # block 8's output arrives before block 9, which never runs
    f0, f1 = recorder.features()
    assert f0.shape == (1, 40, 192, 192) and f1.shape == (1, 20, 192, 192)
    # §11.9: f0 is ×4 nearest of the H/16 map, f1 ×2 nearest of the H/8 map
    torch.testing.assert_close(f0, outputs[5].repeat_interleave(4, 2).repeat_interleave(4, 3), rtol=0, atol=0)
    torch.testing.assert_close(f1, outputs[8].repeat_interleave(2, 2).repeat_interleave(2, 3), rtol=0, atol=0)


def test_recorder_without_truncation_runs_everything():
    recorder = features.FeatureRecorder(GOODDRAG_TAP, (H, W), truncate=False)
    ran, outputs = run_decoder(recorder)
    assert ran == list(range(12))
    (f,) = recorder.features()
    assert f.shape == (1, 20, 384, 384)
    torch.testing.assert_close(f, torch.nn.functional.interpolate(outputs[8], size=(384, 384), mode="bilinear"))


def test_recorder_reports_missing_taps():
    recorder = features.FeatureRecorder(DRAGON_TAP, (H, W))
    recorder.observe(6, torch.zeros(1, 1, 2, 2))
    assert not recorder.complete
    with pytest.raises(ValueError, match=r"\[8\]"):
        recorder.features()


def test_recorder_keeps_the_graph():
    recorder = features.FeatureRecorder(GOODDRAG_TAP, (16, 16))
    h = torch.ones(1, 2, 4, 4, requires_grad=True)
    with pytest.raises(features.StopForward):
        recorder.observe(9, h * 3)
    recorder.features()[0].sum().backward()
    assert float(h.grad.sum()) == pytest.approx(3 * 2 * 8 * 8)


def test_bilinear_is_half_pixel_centred():
    ramp = torch.tensor([[[[0.0, 1.0]]]])
    out = features.resize_feature(ramp, (1, 4), "bilinear")
    torch.testing.assert_close(out.flatten(), torch.tensor([0.0, 0.25, 0.75, 1.0]))
    assert torch.equal(features.resize_feature(ramp, (1, 4), "nearest").flatten(), torch.tensor([0.0, 0, 1, 1]))
    with pytest.raises(ValueError, match="mode"):
        features.resize_feature(ramp, (1, 4), "area")


def test_concat_features():
    a, b = torch.ones(1, 2, 3, 3), torch.ones(1, 1, 3, 3)
    out = features.concat_features([a, b], weights=(0.5, 2.0))
    assert out.shape == (1, 3, 3, 3)
    assert out[0, :2].eq(0.5).all() and out[0, 2].eq(2.0).all()
    assert features.concat_features([a, b]).eq(1.0).all()


def test_pca_rgb_recovers_the_main_direction():
    gen = torch.Generator().manual_seed(0)
    direction = torch.randn(32, generator=gen)
    ramp = torch.linspace(-1, 1, 20).view(1, 20).expand(10, 20)
    feature = direction.view(32, 1, 1) * ramp + 0.01 * torch.randn(32, 10, 20, generator=gen)
    image = features.pca_rgb(feature)
    assert image.shape == (10, 20, 3) and image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    red = image[..., 0].mean(dim=0)
    # the first component follows the ramp, signed by the largest loading
    sign = 1.0 if float(direction[direction.abs().argmax()]) > 0 else -1.0
    assert torch.all((red[1:] - red[:-1]) * sign > 0)
    torch.testing.assert_close(features.pca_rgb(feature), image, rtol=0, atol=0)
    torch.testing.assert_close(features.pca_rgb(feature.double() * 7.0), image, rtol=0, atol=1e-5)


def test_pca_rgb_degenerate_inputs():
    flat = features.pca_rgb(torch.ones(5, 4, 4))
    assert torch.isfinite(flat).all() and flat.shape == (4, 4, 3)
    two = features.pca_rgb(torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(1)))
    assert two.shape == (4, 4, 3) and two[..., 2].eq(0).all()
