"""DragonDiffusion energies and the EnergyGuidance payload: dragondiffusion.md §3, §7, §11.7, §11.8, §11.11."""
import pytest
import torch
import torch.nn.functional as F

from comfyui_dragedit.kernels import energy as E
from comfyui_dragedit.kernels import masks as M

LATENT = (8, 12)                 # image 64 x 96, feature grid 16 x 24
IMAGE = (64, 96)
W_F = 24


def stub_features(seed=0, channels=(6, 5)):
    """Translation-equivariant two-layer extractor (§11.7): circular-pad convs on z, nearest x2 to the grid."""
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.randn(channels[0], 4, 3, 3, generator=gen, dtype=torch.float64) / 3
    w2 = torch.randn(channels[1], channels[0], 3, 3, generator=gen, dtype=torch.float64) / 3

    def features_fn(z, t=0):
        h1 = torch.tanh(F.conv2d(F.pad(z, (1, 1, 1, 1), mode="circular"), w1))
        h2 = torch.tanh(F.conv2d(F.pad(h1, (1, 1, 1, 1), mode="circular"), w2))
        return [F.interpolate(h, scale_factor=2, mode="nearest") for h in (h1, h2)]
    return features_fn


FEATS = stub_features()


def latent(seed):
    return torch.randn(1, 4, *LATENT, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def image_mask(rows=(20, 36), cols=(32, 56)):
    m = torch.zeros(IMAGE)
    m[rows[0]:rows[1], cols[0]:cols[1]] = 1.0
    return m


def grad_of(energy_fn, z):
    z = z.clone().requires_grad_(True)
    e = energy_fn(z)
    return torch.autograd.grad(e, z)[0] if e.requires_grad else torch.zeros_like(z), e.item()


def edit_con(guidance, ref_z, src_z=None):
    ref = FEATS(ref_z)
    src = None if src_z is None else FEATS(src_z)
    return (lambda z: E.energies(guidance, FEATS(z), ref, src)[0],
            lambda z: E.energies(guidance, FEATS(z), ref, src)[1])


# ------------------------------------------------------------------------------------ oracle (bool masks)

def cos(a, ma, b, mb):
    """Per-pixel cosine of a[:, ma] and b[:, mb] in row-major order, features [1, C, H, W], masks bool [H, W]."""
    return F.cosine_similarity(a[0][:, ma], b[0][:, mb], dim=0)


def pooled(a, ma, b, mb):
    return F.cosine_similarity(a[0][:, ma].mean(1), b[0][:, mb].mean(1), dim=0)


def test_move_energy_matches_the_spec_formulas():
    """§3.1 with 0.5 layer weights, raw cos in edit/content, (1+cos)/2 in contrast/inpaint, inpaint without 0.5."""
    g = E.move(image_mask(), (8, -4), LATENT)
    cur, ref = FEATS(latent(1)), FEATS(latent(2))
    org = M.to_grid(image_mask(), LATENT, 2)
    target = torch.roll(org, (-1, 2), (0, 1))
    other, vac = ~(org | target), org & ~target
    we, wc, wx, wi = 4.0, 6.0, 0.2, 0.8
    edit = sum(0.5 * we / (1 + 4 * cos(c, target, r, org).mean()) for c, r in zip(cur, ref))
    con = sum(0.5 * wc / (1 + 4 * cos(r, other, c, other).mean()) + 0.5 * wx * ((1 + cos(c, vac, r, vac)) / 2).mean()
              + wi / (1 + 4 * (1 + pooled(c, vac, r, other)) / 2) for c, r in zip(cur, ref))
    got = E.energies(g, cur, ref)
    assert torch.equal(g.masks["cur"], target)
    assert float(got[0]) == pytest.approx(float(edit), rel=1e-6)
    assert float(got[1]) == pytest.approx(float(con), rel=1e-6)


def test_appearance_and_paste_energies_match_the_spec_formulas():
    """§3.2 mean-pooled edit, §3.3 per-pixel edit, both (1+cos)/2 and summed over layers without 1/2."""
    cur, base, rep = FEATS(latent(1)), FEATS(latent(2)), FEATS(latent(3))
    mb = M.to_grid(image_mask(), LATENT, 2)
    mr = M.to_grid(image_mask((8, 24), (8, 40)), LATENT, 2)
    ga = E.appearance(image_mask(), image_mask((8, 24), (8, 40)), LATENT)
    con = sum(5.0 / (1 + 4 * ((1 + cos(c, ~mb, b, ~mb)) / 2).mean()) for c, b in zip(cur, base))
    edit = sum(3.5 / (1 + 4 * (1 + pooled(c, mb, r, mr)) / 2) for c, r in zip(cur, rep))
    got = E.energies(ga, cur, base, rep)
    assert (float(got[0]), float(got[1])) == pytest.approx((float(edit), float(con)), rel=1e-6)

    gp = E.paste(image_mask((8, 24), (8, 40)), (24, 12), LATENT)
    dest = torch.roll(mr, (3, 6), (0, 1))
    edit = sum(4.0 / (1 + 4 * ((1 + cos(c, dest, r, mr)) / 2).mean()) for c, r in zip(cur, rep))
    con = sum(6.0 / (1 + 4 * ((1 + cos(c, ~dest, b, ~dest)) / 2).mean()) for c, b in zip(cur, base))
    got = E.energies(gp, cur, base, rep)
    assert torch.equal(gp.masks["base"], dest) and torch.equal(gp.masks["replace"], mr)
    assert (float(got[0]), float(got[1])) == pytest.approx((float(edit), float(con)), rel=1e-6)


def test_drag_energy_matches_the_spec_formula():
    """§3.4: 1/(L J) over layers and pairs, pull on the target patch, push on P_tar minus P_cur; 1/L content."""
    handles, targets = [[20.0, 20.0], [60.0, 30.0]], [[28.0, 20.0], [68.0, 40.0]]
    edit_region = image_mask((8, 48), (8, 88))
    g = E.drag(handles, targets, LATENT, mask=edit_region)
    cur, ref = FEATS(latent(1)), FEATS(latent(2))

    def box(x, y):
        m = torch.zeros(16, 24, dtype=torch.bool)
        m[y // 4 - 1:y // 4 + 2, x // 4 - 1:x // 4 + 2] = True
        return m
    keep = ~M.to_grid(edit_region, LATENT, 2)
    edit = 0.0
    for c, r in zip(cur, ref):
        for (hx, hy), (tx, ty) in zip(handles, targets):
            pt, pc = box(int(hx), int(hy)), box(int(tx), int(ty))
            push = pt & ~pc
            edit = edit + (4.0 / (1 + 4 * ((1 + cos(c, pc, r, pt)) / 2).mean())
                           + 0.2 * ((1 + cos(c, push, r, push)) / 2).mean()) / 4
    con = sum(0.5 * 6.0 / (1 + 4 * ((1 + cos(r, keep, c, keep)) / 2).mean()) for c, r in zip(cur, ref))
    got = E.energies(g, cur, ref)
    assert (float(got[0]), float(got[1])) == pytest.approx((float(edit), float(con)), rel=1e-6)


def test_layer_weights_override_and_zero_weights_drop_terms():
    cur, ref = FEATS(latent(1)), FEATS(latent(2))
    base = E.energies(E.move(image_mask(), (8, 0), LATENT, weights=E.EnergyWeights(4, 6)), cur, ref)
    doubled = E.energies(E.move(image_mask(), (8, 0), LATENT, weights=E.EnergyWeights(4, 6),
                                layer_weights=(1.0, 1.0)), cur, ref)
    assert float(doubled[0]) == pytest.approx(2 * float(base[0]))
    none = E.energies(E.move(image_mask(), (8, 0), LATENT, weights=E.EnergyWeights(0, 0)), cur, ref)
    assert not none[0].requires_grad and float(none[0]) == 0.0 and float(none[1]) == 0.0
    with pytest.raises(ValueError, match="layer_weights"):
        E.energies(E.move(image_mask(), (8, 0), LATENT, layer_weights=(1.0,)), cur, ref)


# ---------------------------------------------------------------------------- §11.7 stationarity and descent

def _roll(z, dy, dx):
    return torch.roll(z, (dy, dx), (2, 3))


CASES = {
    # mode: (guidance, z_ref, z_src, z at which E_edit is stationary, z at which E_con is stationary)
    "move": lambda: (E.move(image_mask(), (8, 8), LATENT, weights=E.EnergyWeights(4, 6)),
                     latent(1), None, _roll(latent(1), 1, 1), latent(1)),
    "resize_move": lambda: (E.move(image_mask(), (-16, 8), LATENT, weights=E.EnergyWeights(4, 6)),
                            latent(1), None, _roll(latent(1), 1, -2), latent(1)),
    "appearance": lambda: (E.appearance(image_mask(), image_mask(), LATENT),
                           latent(1), latent(3), latent(3), latent(1)),
    "paste": lambda: (E.paste(image_mask(), (-8, 16), LATENT), latent(1), latent(3), _roll(latent(3), 2, -1),
                      latent(1)),
    "drag": lambda: (E.drag([[30.0, 22.0], [52.0, 30.0]], [[38.0, 30.0], [60.0, 38.0]], LATENT,
                            mask=image_mask((8, 56), (8, 88)), weights=E.EnergyWeights(4, 6)),
                     latent(1), None, _roll(latent(1), 1, 1), latent(1)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_energies_are_stationary_at_the_exact_edit(case):
    """§11.7: a rolled reference (whole latent px, no wrap) pairs identical features: cos = 1 is a maximum."""
    g, z_ref, z_src, z_edit, z_keep = CASES[case]()
    e_edit, e_con = edit_con(g, z_ref, z_src)
    grad_edit, _ = grad_of(e_edit, z_edit)
    grad_con, _ = grad_of(e_con, z_keep)
    random_edit, _ = grad_of(e_edit, latent(7))
    random_con, _ = grad_of(e_con, latent(7))
    assert grad_edit.abs().max() < 1e-12 * max(1.0, float(random_edit.abs().max()))
    assert grad_con.abs().max() < 1e-12 * max(1.0, float(random_con.abs().max()))
    assert random_edit.abs().max() > 1e-4 and random_con.abs().max() > 1e-4   # the check can fail


@pytest.mark.parametrize("case", sorted(CASES))
def test_gated_gradient_steps_descend(case):
    """§11.7: -λ m↓⊙∇E_edit lowers E_edit, -λ (1-m↓)⊙∇E_con lowers E_con, by -λ‖m∇E‖² to 1st order."""
    g, z_ref, z_src, _, _ = CASES[case]()
    e_edit, e_con = edit_con(g, z_ref, z_src)
    m = g.gate.to(torch.float64)[None, None]
    z = latent(11)
    for fn, gate in ((e_edit, m), (e_con, 1 - m)):
        grad, e0 = grad_of(fn, z)
        step = gate * grad
        lam = 1e-4 / float(step.abs().max())
        _, e1 = grad_of(fn, z - lam * step)
        predicted = -lam * float((step * grad).sum())
        assert e1 < e0
        assert e1 - e0 == pytest.approx(predicted, rel=0.05)


# ------------------------------------------------------------------------------- §11.11 no NaN, empty terms

@pytest.mark.parametrize("faithful", [False, True])
def test_zero_offset_skips_the_empty_vacated_area_and_stays_finite(faithful):
    g = E.move(image_mask(), (0, 0), LATENT, faithful_bugs=faithful)
    assert g.index["non_overlap"].numel() == 0
    z = latent(4).requires_grad_(True)
    e = E.energies(g, FEATS(z), FEATS(latent(1)))
    assert all(torch.isfinite(x) for x in e)
    grads = torch.autograd.grad(sum(e), z)[0]
    assert torch.isfinite(grads).all() and grads.abs().max() > 0
    assert torch.isnan(torch.empty(3, 0).mean(1)).all()   # what an unskipped empty term would give


def test_an_object_covering_everything_leaves_no_content_term():
    g = E.move(torch.ones(IMAGE), (0, 0), LATENT)
    assert g.index["other"].numel() == 0
    e_edit, e_con = E.energies(g, FEATS(latent(4).requires_grad_(True)), FEATS(latent(1)))
    assert torch.isfinite(e_edit) and float(e_con) == 0.0 and not e_con.requires_grad
    moved = E.move(torch.ones(IMAGE), (16, 0), LATENT)          # vacated area, nothing kept, no reference
    assert all(torch.isfinite(x) for x in E.energies(moved, FEATS(latent(4)), FEATS(latent(1))))


@pytest.mark.parametrize("faithful", [False, True])
def test_drag_with_coinciding_patches_is_finite(faithful):
    g = E.drag([[40.0, 30.0]], [[41.0, 31.0]], LATENT, faithful_bugs=faithful)
    assert g.push[0].numel() == 0
    assert all(torch.isfinite(x) for x in E.energies(g, FEATS(latent(4)), FEATS(latent(1))))


def test_an_empty_reference_region_counts_as_not_given():
    g = E.move(image_mask(), (8, 0), LATENT, reference_mask=torch.zeros(IMAGE))
    assert torch.equal(g.masks["ref"], g.masks["other"])
    r = E.move(image_mask(), (8, 0), LATENT, reference_mask=image_mask((0, 8), (0, 8)))
    assert int(r.masks["ref"].sum()) == 4


# ------------------------------------------------------------------------------------------ input errors

@pytest.mark.parametrize("offset", [(200.0, 0.0), (0.0, -70.0), (-90.0, 40.0)])
@pytest.mark.parametrize("builder", [E.move, E.paste])
def test_moving_the_object_wholly_out_raises_naming_offset(builder, offset):
    with pytest.raises(ValueError, match="offset"):
        builder(image_mask(), offset, LATENT)


@pytest.mark.parametrize("scale", [0.0, -0.5, float("nan")])
def test_bad_scale_raises_naming_scale(scale):
    for build in (lambda: E.move(image_mask(), (0, 0), LATENT, scale=scale),
                  lambda: E.resize(image_mask(), scale, LATENT),
                  lambda: E.paste(image_mask(), (0, 0), LATENT, scale=scale),
                  lambda: E.move(image_mask(), (0, 0), LATENT, scale=scale, faithful_bugs=True)):
        with pytest.raises(ValueError, match="scale"):
            build()


@pytest.mark.parametrize("build,name", [
    (lambda: E.move(torch.ones(50, 50), (0, 0), LATENT), "mask"),
    (lambda: E.move(image_mask(), (0, 0), LATENT, reference_mask=torch.ones(64, 64)), "reference_mask"),
    (lambda: E.appearance(image_mask(), torch.ones(32, 32), LATENT), "mask_replace"),
    (lambda: E.appearance(torch.zeros(IMAGE), image_mask(), LATENT), "mask_base"),
    (lambda: E.move(torch.zeros(IMAGE), (0, 0), LATENT), "mask"),
    (lambda: E.paste(torch.ones(2, *IMAGE), (0, 0), LATENT), "mask"),
    (lambda: E.drag([[1.0, 1.0]], [[2.0, 2.0]], LATENT, mask=torch.ones(96, 64)), "mask"),
    (lambda: E.drag([[96.0, 1.0]], [[2.0, 2.0]], LATENT), "handles"),
    (lambda: E.drag([[1.0, 1.0]], [[2.0, -1.0]], LATENT), "targets"),
    (lambda: E.drag([[1.0, 1.0], [3.0, 3.0]], [[2.0, 2.0]], LATENT), "targets"),
    (lambda: E.drag([], [], LATENT), "handles"),
    (lambda: E.move(image_mask(), (0, 0), (8,)), "latent_size"),
    (lambda: E.move(image_mask(), (float("inf"), 0), LATENT), "offset"),
    (lambda: E.move(image_mask(), (0, 0), LATENT, input_scale=0.0), "input_scale"),
    (lambda: E.EnergyWeights(-1.0, 1.0), "w_edit"),
    (lambda: E.move(image_mask(), (0, 0), LATENT, energy_scale=float("nan")), "energy_scale"),
])
def test_bad_inputs_raise_value_error_naming_the_argument(build, name):
    with pytest.raises(ValueError, match=name):
        build()


def test_energies_reject_features_of_another_grid_and_missing_sources():
    g = E.appearance(image_mask(), image_mask(), LATENT)
    with pytest.raises(ValueError, match="cur"):
        E.energies(g, [torch.zeros(1, 3, 8, 12)], [torch.zeros(1, 3, 16, 24)], [torch.zeros(1, 3, 16, 24)])
    with pytest.raises(ValueError, match="src"):
        E.energies(g, FEATS(latent(1)), FEATS(latent(2)))


# ------------------------------------------------------------------------------------ §11.8 mask geometry

def test_move_geometry_is_a_clipped_shift_with_pairs_differing_by_d():
    g = E.move(image_mask(), (16, -8), LATENT)
    org = g.masks["org"]
    assert torch.equal(g.masks["cur"], M.shift(org, -2, 4))
    (dst, src), = g.pairs
    assert dst.numel() == src.numel() == int(org.sum())
    assert torch.equal(dst - src, torch.full_like(dst, -2 * W_F + 4))
    assert torch.equal(g.gate, M.down(g.masks["cur"], LATENT))
    assert torch.equal(g.sde_mask, M.down(g.masks["cur"] | org, LATENT))
    assert torch.equal(g.masks["non_overlap"], org & ~g.masks["cur"])


def test_move_past_the_border_clips_in_the_fixed_mode_and_wraps_in_the_faithful_one():
    mask = image_mask(cols=(72, 92))                   # feature cols 18..22
    fixed = E.move(mask, (16, 0), LATENT)
    assert not fixed.masks["cur"][:, :10].any() and fixed.masks["cur"][:, 23].any()
    faithful = E.move(mask, (16, 0), LATENT, faithful_bugs=True)
    assert faithful.masks["cur"][:, :3].any()          # §9.4: the roll re-enters on the left
    assert int(faithful.masks["cur"].sum()) == int(faithful.masks["org"].sum())


@pytest.mark.parametrize("scale", [0.5, 1.5])
def test_resize_is_about_the_object_centre_and_the_official_one_about_the_image_centre(scale):
    mask = image_mask(rows=(8, 24), cols=(8, 32))       # off-centre object: feature rows 2..5, cols 2..7
    d = (8.0, 4.0)
    fixed = E.resize(mask, scale, LATENT, offset=d)
    cy, cx = M.centroid(fixed.masks["org"])
    assert M.centroid(fixed.masks["cur"]) == pytest.approx((cy + d[1] / 4, cx + d[0] / 4), abs=0.6)
    official = E.resize(mask, scale, LATENT, offset=d, faithful_bugs=True)
    oy, ox = M.centroid(official.masks["cur"])
    ry, rx = (scale * (c + dd // 4 - n / 2) + n / 2 for c, dd, n in ((cy, d[1], 16), (cx, d[0], 24)))
    assert (oy, ox) == pytest.approx((ry, rx), abs=1.0)
    assert abs(ox - (cx + d[0] / 4)) > 1.0              # the two semantics differ (§9.6)


def test_drag_patches_are_3x3_clipped_on_their_own_axis():
    wide = (8, 16)                                      # image 64 x 128, feature grid 16 x 32
    g = E.drag([[125.0, 10.0]], [[3.0, 60.0]], wide)
    (cur, tar), = g.pairs
    assert M.box((2, 30), (16, 32)).tolist() == tar.tolist()
    assert M.box((14, 1), (16, 32)).tolist() == cur.tolist()
    official = E.drag([[125.0, 10.0]], [[3.0, 60.0]], wide, faithful_bugs=True)
    assert official.pairs[0][1].tolist() == M.box((2, 14), (16, 32)).tolist()   # §9.2 x clipped with the height
    with pytest.raises(ValueError, match="handles"):                             # tall image: box off the map
        E.drag([[60.0, 10.0]], [[3.0, 60.0]], (16, 8), faithful_bugs=True)


def test_drag_without_a_mask_edits_everywhere_unless_faithful():
    free = E.drag([[20.0, 20.0]], [[40.0, 20.0]], LATENT)
    assert free.gate.all() and free.index["other"].numel() == 0
    official = E.drag([[20.0, 20.0]], [[40.0, 20.0]], LATENT, faithful_bugs=True)
    assert not official.gate.any()


def test_defaults_follow_the_spec_table():
    """§7: energy scale (slider x 1000), eta, and weights per mode."""
    d = E.DEFAULTS
    assert [d[m].energy_scale for m in ("move", "appearance", "drag", "paste")] == [500, 2000, 2000, 1500]
    assert [d[m].eta for m in ("move", "appearance", "drag", "paste")] == [0.08, 0.04, 0.04, 0.04]
    assert d["move"].weights == E.EnergyWeights(4, 6, 0.2, 0.8)
    assert d["appearance"].weights == E.EnergyWeights(3.5, 5)
    assert d["drag"].weights == E.EnergyWeights(4, 6, 0, 0.2)
    assert d["paste"].weights == E.EnergyWeights(4, 6)
    assert [d[m].cfg for m in ("move", "appearance", "drag", "paste")] == [4, 5, 4, 4]
    g = E.paste(image_mask(), (0, 8), LATENT)
    assert (g.eta, g.energy_scale, g.weights) == (0.04, 1500, d["paste"].weights)


def test_payload_is_frozen_and_to_returns_a_copy():
    g = E.move(image_mask(), (8, 0), LATENT)
    with pytest.raises(Exception):
        g.eta = 1.0
    h = g.to("cpu")
    assert h is not g and torch.equal(h.index["cur"], g.index["cur"])


# -------------------------------------------------------------------------------------------- z_T copy

def test_move_noise_copy_lands_the_object_noise_at_the_target():
    g = E.move(image_mask(), (16, 8), LATENT, keep_latent_mean=False)   # the official copy
    z = latent(5)
    out = E.copy_noise(g, z)
    lat = M.to_grid(image_mask(), LATENT, 1)
    moved = M.shift(lat, 1, 2)
    assert torch.equal(out[..., moved], _roll(z, 1, 2)[..., moved])
    assert torch.equal(out[..., ~moved], z[..., ~moved])
    assert torch.equal(z, latent(5))                     # the input (the bank's z_T) is not written


@pytest.mark.parametrize("mode", ("move", "drag"))
def test_noise_copy_keeps_the_per_channel_mean_by_default(mode):
    """The copied cells are the source noise exactly; the others all shift by one constant per channel, so that
    z_T's per-channel mean (the image's mean colour, through SD's schedule) stays as it was; off, the official copy
    moves it."""
    z = latent(5)
    z[..., 2:5, 4:7] += 2.0                               # a bright object in the noise, as an inversion leaves it
    if mode == "move":
        build = lambda **kw: E.move(image_mask(), (16, 8), LATENT, **kw)   # latent object rows 3-4, cols 4-6
        copied, source = (slice(4, 6), slice(6, 9)), (slice(3, 5), slice(4, 7))
    else:
        build = lambda **kw: E.drag([[44.0, 28.0]], [[76.0, 36.0]], LATENT, **kw)   # latent (3, 5) -> (4, 9)
        copied, source = (slice(3, 6), slice(8, 11)), (slice(2, 5), slice(4, 7))
    kept, official = E.copy_noise(build(), z), E.copy_noise(build(keep_latent_mean=False), z)
    assert torch.equal(kept[..., copied[0], copied[1]], z[..., source[0], source[1]])
    assert torch.equal(official[..., copied[0], copied[1]], z[..., source[0], source[1]])
    written = official != z
    shift = (kept - z)[~written].view(4, -1)   # [C, cells] (batch 1): one value per channel
    assert torch.allclose(shift, shift[:, :1].expand_as(shift))
    assert (shift[:, 0] < -0.05).all()            # the bright copy is taken back from the rest
    assert torch.allclose(kept.mean((2, 3)), z.mean((2, 3)), atol=1e-12)
    assert (official.mean((2, 3)) - z.mean((2, 3)) > 0.05).all()


def test_paste_noise_copy_is_the_official_one():
    """A paste adds an object to the base image, so the base z_T's mean may change with it."""
    assert E.paste(image_mask(), (-16, 8), LATENT).keep_latent_mean is False


def test_noise_copy_input_scale_bug_is_fixed_and_switchable():
    """§9.1: offset drawn at half size (input_scale 2): features move by d*2/4, z_T by d*2/8, or d/8 officially."""
    z = latent(5)
    lat = M.to_grid(image_mask(), LATENT, 1)
    fixed = E.move(image_mask(), (8, 0), LATENT, input_scale=2.0)
    official = E.move(image_mask(), (8, 0), LATENT, input_scale=2.0, faithful_bugs=True)
    assert torch.equal(fixed.masks["cur"], official.masks["cur"])
    assert torch.equal(fixed.masks["cur"], M.shift(fixed.masks["org"], 0, 4))
    for g, dx in ((fixed, 2), (official, 1)):
        moved = M.shift(lat, 0, dx)
        assert torch.equal(E.copy_noise(g, z)[..., moved], _roll(z, 0, dx)[..., moved])


def test_drag_noise_copy_reads_the_untouched_z_unless_faithful():
    """§9.3: the official copies patches in place, so a chained pair reads an earlier pair's write."""
    handles, targets = [[20.0, 20.0], [52.0, 20.0]], [[52.0, 20.0], [84.0, 20.0]]   # latent cols 2 -> 6 -> 10
    square = (12, 12)                                  # the official x-clip (§9.2) stays out of the way
    z = torch.randn(1, 4, *square, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    z0 = z.clone()
    rows = slice(1, 4)
    fixed = E.copy_noise(E.drag(handles, targets, square), z)
    official = E.copy_noise(E.drag(handles, targets, square, faithful_bugs=True), z)
    assert torch.equal(fixed[..., rows, 9:12], z[..., rows, 5:8])
    assert torch.equal(official[..., rows, 9:12], z[..., rows, 1:4])
    assert torch.equal(fixed[..., rows, 5:8], z[..., rows, 1:4])
    assert torch.equal(z, z0)


def test_paste_copies_from_the_replace_noise_and_appearance_keeps_z():
    g = E.paste(image_mask(), (-16, 8), LATENT)
    z_base, z_rep = latent(5), latent(6)
    out = E.copy_noise(g, z_base, z_rep)
    moved = M.shift(M.to_grid(image_mask(), LATENT, 1), 1, -2)
    assert torch.equal(out[..., moved], _roll(z_rep, 1, -2)[..., moved])
    assert torch.equal(out[..., ~moved], z_base[..., ~moved])
    with pytest.raises(ValueError, match="z_T_source"):
        E.copy_noise(g, z_base)
    with pytest.raises(ValueError, match="z_T"):
        E.copy_noise(g, torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8))
    a = E.appearance(image_mask(), image_mask(), LATENT)
    assert torch.equal(E.copy_noise(a, z_base), z_base)


def test_moves_raw_cosine_pull_terms_are_floored_so_the_energy_never_flips_sign():
    """Anti-aligned features (raw cos -1 < RAW_COS_FLOOR) give w / (1 + 4 * -0.2) = 5 w, not w / (1 - 4) = -w / 3:
    without the floor the pull term would reward pushing the object further away."""
    g = E.move(image_mask(), (16, 8), LATENT, weights=E.EnergyWeights(4.0, 0.0), layer_weights=(1.0, 0.0))
    ref = [torch.ones(1, 3, 16, 24, dtype=torch.float64), torch.ones(1, 3, 16, 24, dtype=torch.float64)]
    cur = [-r for r in ref]
    e_edit, e_con = E.energies(g, cur, ref)
    assert E.RAW_COS_FLOOR == -0.2
    assert float(e_edit) == pytest.approx(4.0 / (1 + 4 * E.RAW_COS_FLOOR)) == pytest.approx(20.0)
    assert not e_con.requires_grad
