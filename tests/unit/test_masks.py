"""Mask geometry: grids, empty-mask conventions, placement without wrap-around (dragondiffusion.md §11.8, 9.4)."""
import pytest
import torch

from comfyui_dragedit.kernels import masks as M

LATENT = (8, 12)          # non-square on purpose: axis mix-ups show
GRID = (16, 24)           # feature grid 2h x 2w


def blob(size=GRID, rows=(5, 9), cols=(6, 11)):
    m = torch.zeros(size, dtype=torch.bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    return m


def pixels(mask):
    return {tuple(p) for p in torch.nonzero(mask).tolist()}


# ----------------------------------------------------------------------------------------------------- grids

@pytest.mark.parametrize("shape", [(64, 96), (1, 64, 96), (1, 1, 64, 96), (67, 101), (16, 24), (8, 12)])
def test_to_grid_accepts_image_feature_and_latent_sizes(shape):
    m = torch.zeros(shape)
    m[..., : shape[-2] // 2, : shape[-1] // 2] = 1.0
    out = M.to_grid(m, LATENT, 2)
    assert out.dtype == torch.bool and tuple(out.shape) == GRID
    assert out[:8, :12].all() and not out[8:].any() and not out[:, 12:].any()


@pytest.mark.parametrize("shape", [(64, 64), (32, 48), (2, 64, 96), (96, 64)])
def test_to_grid_rejects_masks_of_another_image_naming_the_argument(shape):
    with pytest.raises(ValueError, match="mask_base"):
        M.to_grid(torch.ones(shape), LATENT, 2, "mask_base")


def test_to_grid_thresholds_at_half_and_rejects_nan():
    m = torch.full((16, 24), 0.5)
    m[0, 0] = 0.51
    assert pixels(M.to_grid(m, LATENT, 2)) == {(0, 0)}
    m[1, 1] = float("nan")
    with pytest.raises(ValueError, match="mask"):
        M.to_grid(m, LATENT, 2)


def test_down_is_nearest_then_positive():
    m = torch.zeros(GRID, dtype=torch.bool)
    m[2, 4] = True      # even pixel: nearest picks it
    m[5, 7] = True      # odd pixel: dropped by the spec's nearest ↓
    assert pixels(M.down(m, LATENT)) == {(1, 2)}


def test_dilate_grows_by_radius_with_kornia():
    m = torch.zeros(GRID, dtype=torch.bool)
    m[5, 5] = True
    assert pixels(M.dilate(m, 1)) == {(y, x) for y in (4, 5, 6) for x in (4, 5, 6)}
    assert int(M.dilate(m, 2).sum()) == 25
    assert torch.equal(M.dilate(m, 0), m)
    with pytest.raises(ValueError, match="radius"):
        M.dilate(m, -1)


def test_bbox_and_centroid_with_the_empty_convention():
    m = blob()
    assert M.bbox(m) == (5, 6, 8, 10)
    assert M.centroid(m) == pytest.approx((6.5, 8.0))
    empty = torch.zeros(GRID, dtype=torch.bool)
    assert M.bbox(empty) is None and M.centroid(empty) is None


# ----------------------------------------------------------------------------------------------- shift/place

def test_shift_clips_at_the_border_while_roll_wraps():
    m = blob(cols=(20, 24))
    clipped = M.shift(m, 1, 2)
    assert pixels(clipped) == {(y + 1, x + 2) for y, x in pixels(m) if x + 2 < 24}
    wrapped = M.shift(m, 1, 2, wrap=True)
    assert torch.equal(wrapped, torch.roll(m, (1, 2), (0, 1)))
    assert wrapped[:, :2].any() and not clipped[:, :2].any()
    assert not M.shift(m, 0, 30).any()


@pytest.mark.parametrize("dx,dy", [(3, 2), (-4, 1), (0, -5), (0, 0)])
def test_place_unit_scale_is_an_exact_shift_with_row_major_pairs(dx, dy):
    """§11.8: s = 1 gives mask_cur = shift(mask_org, d), equal counts, each pair differing by exactly d."""
    m = blob()
    p = M.place(m, (dx, dy))
    assert torch.equal(p.mask, M.shift(m, dy, dx))
    assert p.dst.numel() == p.src.numel() == int(m.sum())
    w = GRID[1]
    assert torch.equal(p.dst // w - p.src // w, torch.full_like(p.dst, dy))
    assert torch.equal(p.dst % w - p.src % w, torch.full_like(p.dst, dx))
    assert torch.equal(p.dst, torch.sort(p.dst).values)   # row-major order


@pytest.mark.parametrize("scale", [0.5, 1.5, 2.0])
def test_place_resizes_about_the_object_centre(scale):
    """§11.8 fixed: a source pixel p lands at c + s(p - c) + d within s/2 px, c the object's box centre."""
    m = blob()
    dx, dy = 2.0, -1.0
    p = M.place(m, (dx, dy), scale)
    w = GRID[1]
    cy, cx = (5 + 8) / 2, (6 + 10) / 2
    qy, qx, sy, sx = p.dst // w, p.dst % w, p.src // w, p.src % w
    assert ((cy + scale * (sy - cy) + dy - qy).abs() <= scale / 2 + 1e-9).all()
    assert ((cx + scale * (sx - cx) + dx - qx).abs() <= scale / 2 + 1e-9).all()
    assert m.flatten()[p.src].all()
    assert M.centroid(p.mask) == pytest.approx((cy + dy, cx + dx), abs=0.51)


def test_place_clips_partly_moved_out_objects_without_wrap():
    m = blob(cols=(18, 23))
    p = M.place(m, (4, 0))
    assert pixels(p.mask) == {(y, x + 4) for y, x in pixels(m) if x + 4 < 24}
    assert not p.mask[:, :18].any()


@pytest.mark.parametrize("offset", [(30, 0), (0, -20), (-11, 0)])
def test_place_raises_when_the_object_leaves_the_grid(offset):
    with pytest.raises(ValueError, match="offset"):
        M.place(blob(), offset)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_place_rejects_bad_scales(scale):
    with pytest.raises(ValueError, match="scale"):
        M.place(blob(), (0, 0), scale)


def test_place_rejects_an_empty_mask_and_bad_offsets():
    with pytest.raises(ValueError, match="mask"):
        M.place(torch.zeros(GRID, dtype=torch.bool), (1, 1))
    with pytest.raises(ValueError, match="offset"):
        M.place(blob(), (float("nan"), 0))


# ------------------------------------------------------------------------------------- the official geometry

@pytest.mark.parametrize("scale,d", [(1.5, (1, 2)), (0.5, (-2, 3)), (2.0, (0, 0)), (0.75, (2, -2))])
def test_image_centre_geometry_maps_p_to_s_p_plus_d_minus_half_n_plus_half_n(scale, d):
    """§11.8 official: pixel p maps to s(p + d - N/2) + N/2 within 1 px (paired by position, no wrap)."""
    m = blob(rows=(6, 10), cols=(9, 14))
    dy, dx = d
    p = M.place_about_image_centre(m.float(), GRID, scale, roll_canvas=(int(dy * scale), int(dx * scale)),
                                   by_order=False)
    w = GRID[1]
    qy, qx, sy, sx = p.dst // w, p.dst % w, p.src // w, p.src % w
    assert ((scale * (sy + dy - GRID[0] / 2) + GRID[0] / 2 - qy).abs() <= 1.0 + scale / 2).all()
    assert ((scale * (sx + dx - GRID[1] / 2) + GRID[1] / 2 - qx).abs() <= 1.0 + scale / 2).all()


def test_image_centre_geometry_raises_exactly_when_the_crop_drops_pixels():
    """§11.8: the official 'Resize out of bounds' fires exactly when the centre crop loses object pixels."""
    outcomes = set()
    for cols in [(2, 6), (5, 9), (6, 10), (7, 11), (13, 18), (14, 19)]:
        m = blob(rows=(6, 9), cols=cols).float()
        canvas = M.resize(m, (32, 48))                    # scale 2
        dropped = int(canvas.sum()) - int(canvas[8:24, 12:36].sum())   # the centre crop back to 16 x 24
        outcomes.add(dropped > 0)
        if dropped:
            with pytest.raises(ValueError, match="scale"):
                M.place_about_image_centre(m, GRID, 2.0)
        else:
            assert M.place_about_image_centre(m, GRID, 2.0).dst.numel() == int(canvas.sum())
    assert outcomes == {True, False}


def test_image_centre_geometry_wraps_and_pairs_by_order_like_the_official_code():
    """§9.4: the roll wraps; the row-major pairing is then no longer the translation."""
    m = blob(cols=(18, 23))
    p = M.place_about_image_centre(m.float(), GRID, 1.0, roll_grid=(0, 4))
    assert torch.equal(p.mask, torch.roll(m, (0, 4), (0, 1)))
    assert p.mask[:, :3].any()
    by_pos = M.place_about_image_centre(m.float(), GRID, 1.0, roll_grid=(0, 4), by_order=False)
    assert torch.equal(by_pos.dst, p.dst) and not torch.equal(by_pos.src, p.src)
    assert torch.equal((by_pos.dst % 24 - by_pos.src % 24) % 24, torch.full_like(p.dst, 4))


# ------------------------------------------------------------------------------------------------- patches

def test_patch_centre_clips_each_axis_to_its_own_size():
    grid = (16, 32)                                   # wide map: H/4 = 16, W/4 = 32
    assert M.patch_centre((125.0, 10.0), grid) == (2, 30)
    assert M.patch_centre((0.0, 63.0), grid) == (14, 1)
    assert M.patch_centre((125.0, 10.0), grid, faithful_bugs=True) == (2, 14)   # §9.2: x clipped with the height


def test_box_is_3x3_row_major_and_clipped_to_the_map():
    assert M.box((2, 3), GRID).tolist() == [1 * 24 + 2, 1 * 24 + 3, 1 * 24 + 4, 2 * 24 + 2, 2 * 24 + 3, 2 * 24 + 4,
                                          3 * 24 + 2, 3 * 24 + 3, 3 * 24 + 4]
    assert M.box((0, 0), GRID).tolist() == [0, 1, 24, 25]
