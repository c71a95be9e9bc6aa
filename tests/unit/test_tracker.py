"""Point tracking = argmin of the L1 feature distance in a clamped window (gooddrag.md §10 item 5)."""
import pytest
import torch

from comfyui_dragedit.kernels.tracker import TrackerSpec, track


def _map(channels=6, height=20, width=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, channels, height, width, generator=g, dtype=torch.float64)


def _plant(fmap, where, vector):
    fmap = fmap.clone()
    fmap[0, :, where[0], where[1]] = vector
    return fmap


def _slice_tracker(fmap, ref, handle, origin, r2):
    """A plain DragDiffusion-style loop: slice the window cut at the map, argmin, map back by the cut origin."""
    _, _, height, width = fmap.shape
    r_lo, r_hi = max(0, handle[0] - r2), min(height, handle[0] + r2 + 1)
    c_lo, c_hi = max(0, handle[1] - r2), min(width, handle[1] + r2 + 1)
    f0 = ref[0, :, origin[0], origin[1]]
    dist = (fmap[0, :, r_lo:r_hi, c_lo:c_hi] - f0[:, None, None]).abs().sum(dim=0)
    row, col = divmod(int(dist.argmin()), dist.shape[1])
    return [r_lo + row, c_lo + col]


def test_planted_vector_inside_the_window_is_found():
    ref = _map(seed=1)
    f0 = ref[0, :, 5, 6]
    cur = _plant(_map(seed=2) + 50.0, (9, 13), f0)  # everything else is far from f0
    new = track(TrackerSpec(r2=8), cur, ref, torch.tensor([[6, 7]]), torch.tensor([[5, 6]]))
    assert new.tolist() == [[9, 13]]


def test_planted_vector_outside_the_window_is_not_found():
    ref = _map(seed=1)
    cur = _plant(_map(seed=2), (15, 20), ref[0, :, 5, 6])
    new = track(TrackerSpec(r2=3), cur, ref, torch.tensor([[6, 7]]), torch.tensor([[5, 6]]))
    row, col = new[0].tolist()
    assert abs(row - 6) <= 3 and abs(col - 7) <= 3


def test_ties_go_to_the_first_in_row_major_order():
    ref = _map(seed=1)
    f0 = ref[0, :, 5, 6]
    cur = _plant(_plant(_map(seed=2) + 50.0, (9, 4), f0), (8, 10), f0)
    new = track(TrackerSpec(r2=4), cur, ref, torch.tensor([[8, 7]]), torch.tensor([[5, 6]]))
    assert new.tolist() == [[8, 10]]


def test_the_reference_vector_comes_from_the_original_handle():
    ref = _map(seed=1)
    cur = _plant(_plant(_map(seed=2) + 50.0, (10, 12), ref[0, :, 3, 4]), (11, 9), ref[0, :, 10, 10])
    # the current handle (10, 10) has its own reference vector at (11, 9); the original one p0 = (3, 4) wins
    new = track(TrackerSpec(r2=3), cur, ref, torch.tensor([[10, 10]]), torch.tensor([[3, 4]]))
    assert new.tolist() == [[10, 12]]


def test_matches_a_plain_sliced_loop_everywhere_including_the_borders():
    ref, cur = _map(seed=3), _map(seed=4)
    g = torch.Generator().manual_seed(5)
    handles = torch.cat([torch.randint(0, 20, (40, 1), generator=g), torch.randint(0, 24, (40, 1), generator=g)], 1)
    handles = torch.cat([handles, torch.tensor([[0, 0], [19, 23], [0, 23], [19, 0], [1, 22]])])
    origins = handles.flip(0)
    new = track(TrackerSpec(r2=4), cur, ref, handles, origins)
    expected = [_slice_tracker(cur, ref, h.tolist(), o.tolist(), 4) for h, o in zip(handles, origins)]
    assert new.tolist() == expected
    assert (new >= 0).all() and (new[:, 0] < 20).all() and (new[:, 1] < 24).all()


def test_unclamped_mode_keeps_the_official_origin_arithmetic():
    ref = _map(seed=1)
    cur = _plant(_map(seed=2) + 50.0, (1, 5), ref[0, :, 2, 3])
    handle, origin = torch.tensor([[2, 3]]), torch.tensor([[2, 3]])
    assert track(TrackerSpec(r2=4, clamp=True), cur, ref, handle, origin).tolist() == [[1, 5]]
    # official: origin (2-4, 3-4) = (-2, -1) plus the argmin (1, 5) in the cut window -> (-1, 4), clipped
    assert track(TrackerSpec(r2=4, clamp=False), cur, ref, handle, origin).tolist() == [[0, 4]]
    inner = _plant(_map(seed=2) + 50.0, (12, 14), ref[0, :, 2, 3])
    handle = torch.tensor([[10, 12]])
    for clamp in (True, False):
        assert track(TrackerSpec(r2=4, clamp=clamp), inner, ref, handle, origin).tolist() == [[12, 14]]


def test_tracking_takes_no_gradient():
    ref, cur = _map(seed=1), _map(seed=2).requires_grad_(True)
    new = track(TrackerSpec(r2=2), cur * 2, ref, torch.tensor([[4, 4]]), torch.tensor([[4, 4]]))
    assert not new.requires_grad and new.dtype == torch.long


@pytest.mark.parametrize("kwargs, name", [(dict(r2=0), "r2"), (dict(r2=2.5), "r2"), (dict(clamp="yes"), "clamp")])
def test_bad_settings_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TrackerSpec(**kwargs)
