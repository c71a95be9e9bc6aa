"""Bank attention contexts through real multi-head attention with random projections (dragondiffusion.md §11.4,
gooddrag.md §10.4)."""
import pytest
import torch

from comfyui_dragedit.kernels import bank_attention as ba

B, N, C, HEADS = 2, 16, 8, 2   # tokens on a 4x4 grid


def projections(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(C, C, generator=gen, dtype=torch.float64) / C ** 0.5 for _ in range(3)]


def attention(n, context, value, weights):
    """softmax(q kᵀ/√d) v per head, with q = n W_q, k = context W_k, v = value W_v, as attn1 computes it."""
    w_q, w_k, w_v = weights
    q, k, v = n @ w_q, context @ w_k, value @ w_v

    def heads(x):
        return x.view(x.shape[0], x.shape[1], HEADS, C // HEADS).transpose(1, 2)

    q, k, v = heads(q), heads(k), heads(v)
    probs = torch.softmax(q @ k.transpose(-1, -2) / (C // HEADS) ** 0.5, dim=-1)
    return (probs @ v).transpose(1, 2).reshape(n.shape[0], n.shape[1], C)


def tokens(seed, batch=1):
    return torch.randn(batch, N, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture
def same():
    """The branch's own n equals the bank entry: both CFG halves carry the reference's n."""
    n_ref = tokens(1)
    return n_ref.expand(B, -1, -1).clone(), n_ref


def test_replace_identity(same):
    n, n_ref = same
    w = projections()
    torch.testing.assert_close(attention(n, *ba.replace_context(n, n_ref), w), attention(n, n, n, w))


def test_concat_identity_and_sensitivity(same):
    # duplicated keys leave the softmax average unchanged; a different reference does change it
    n, n_ref = same
    w = projections()
    ctx, val = ba.concat_context(n, n_ref)
    assert ctx.shape == (B, 2 * N, C)
    torch.testing.assert_close(attention(n, ctx, val, w), attention(n, n, n, w))
    other = attention(n, *ba.concat_context(n, tokens(2)), w)
    assert (other - attention(n, n, n, w)).abs().max() > 1e-3


def test_masked_identity(same):
    # M_b = everything, M_r = everything, replace bank = own n ⇒ plain self-attention
    n, n_ref = same
    w = projections()
    full = torch.ones(32, 32)
    base_idx, rep_idx = ba.masked_token_indices(full, full, (4, 4))
    assert base_idx.numel() == 0 and rep_idx.numel() == N
    out = attention(n, *ba.masked_context(n, tokens(3), n_ref, base_idx, rep_idx), w)
    torch.testing.assert_close(out, attention(n, n, n, w))
    # M_b = ∅, M_r = ∅ with base bank = own n, the other way round
    empty = torch.zeros(32, 32)
    base_idx, rep_idx = ba.masked_token_indices(empty, empty, (4, 4))
    out = attention(n, *ba.masked_context(n, n_ref, tokens(3), base_idx, rep_idx), w)
    torch.testing.assert_close(out, attention(n, n, n, w))


def test_masked_token_order():
    # [n_base[~M_b] ; n_rep[M_r]], row-major tokens
    n_base, n_rep = tokens(4), tokens(5)
    mask_b = torch.zeros(4, 4)
    mask_b[1:3, 1:3] = 1
    mask_r = torch.zeros(4, 4)
    mask_r[0, 2:] = 1
    base_idx, rep_idx = ba.masked_token_indices(mask_b, mask_r, (4, 4))
    ctx, val = ba.masked_context(tokens(6, B), n_base, n_rep, base_idx, rep_idx)
    expected = torch.cat([n_base[:, ~mask_b.bool().flatten()], n_rep[:, mask_r.bool().flatten()]], dim=1)
    assert ctx.shape == (B, 12 + 2, C) and val is ctx
    torch.testing.assert_close(ctx[0], expected[0], rtol=0, atol=0)
    torch.testing.assert_close(ctx[1], expected[0], rtol=0, atol=0)
    torch.testing.assert_close(ctx[0, 12:], n_rep[0, [2, 3]], rtol=0, atol=0)


def test_masked_both_sides_empty_falls_back_to_base():
    # M_b everything and M_r empty would leave no key (NaN softmax); the base bank is used whole
    n = tokens(7, B)
    base_idx, rep_idx = ba.masked_token_indices(torch.ones(8, 8), torch.zeros(8, 8), (4, 4))
    ctx, _ = ba.masked_context(n, tokens(8), tokens(9), base_idx, rep_idx)
    assert ctx.shape == (B, N, C)
    assert torch.isfinite(attention(n, ctx, ctx, projections())).all()


def test_source_mode():
    # gooddrag.md §10.4: the source row is untouched; equal batch items give plain attention
    w = projections()
    n = tokens(10, B)
    out = attention(n, *ba.source_context(n), w)
    torch.testing.assert_close(out[:1], attention(n[:1], n[:1], n[:1], w))
    assert (out[1:] - attention(n[1:], n[1:], n[1:], w)).abs().max() > 1e-3
    equal = tokens(11).expand(B, -1, -1).clone()
    torch.testing.assert_close(attention(equal, *ba.source_context(equal), w), attention(equal, equal, equal, w))


def test_source_mode_groups_per_cfg_half():
    n = tokens(12, 4)   # [uncond_src, uncond_edit, cond_src, cond_edit]
    ctx, _ = ba.source_context(n, num_groups=2)
    for row, src in ((0, 0), (1, 0), (2, 2), (3, 2)):
        torch.testing.assert_close(ctx[row], n[src], rtol=0, atol=0)
    with pytest.raises(ValueError, match="num_groups"):
        ba.source_context(tokens(13, 3), num_groups=2)


def test_bank_entry_follows_branch_dtype_and_batch():
    n = tokens(14, 4).float()
    ctx, _ = ba.replace_context(n, tokens(15).half())
    assert ctx.dtype == torch.float32 and ctx.shape == (4, N, C)
    ctx, _ = ba.replace_context(n, tokens(16, 4))
    assert ctx.shape == (4, N, C)
    with pytest.raises(ValueError, match="batch"):
        ba.replace_context(n, tokens(17, 2))


def test_token_mask_nearest_row_major():
    mask = torch.zeros(64, 96)
    mask[:, :48] = 1                # left half
    mask[:8, :] = 0.4               # below threshold
    grid = ba.token_grid(6 * 4, (64, 96))
    assert grid == (4, 6)
    tm = ba.token_mask(mask, grid)
    assert tm.dtype == torch.bool and tm.shape == (24,)
    expected = torch.tensor([[0] * 6] + [[1, 1, 1, 0, 0, 0]] * 3, dtype=torch.bool).flatten()
    assert torch.equal(tm, expected)
    with pytest.raises(ValueError, match="grid"):
        ba.token_grid(23, (64, 96))
    with pytest.raises(ValueError, match="mask"):
        ba.token_mask(mask[None], grid)


def test_token_grid_sd_layers():
    # 768² image: latent 96², decoder layers at 24², 48², 96² tokens
    for side in (24, 48, 96):
        assert ba.token_grid(side * side, (768, 768)) == (side, side)
    assert ba.token_grid(12 * 16, (768, 1024)) == (12, 16)
