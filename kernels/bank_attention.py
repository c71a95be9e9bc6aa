"""Self-attention context from memory-bank entries, for ComfyUI's attn1_patch (dragondiffusion.md §5).

attn1_patch receives the normed hidden states n [B, N, C] *before* the K/V projections and returns
(n, context, value); K = W_k context and V = W_v value. So every mode here is a choice of tokens fed to the
frozen projections: n_ref instead of K_ref/V_ref, exactly as the bank stores it (memory_bank.py). Bank entries
may live on the CPU in fp16; they are selected there and moved to n's device and dtype without a sync.
"""
import math

import torch
import torch.nn.functional as F
from .errors import ArgumentError

MODES = ("replace", "concat", "masked", "source")


def _to(n_ref: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """n_ref on n's device and dtype, broadcast to n's batch: one reference for both CFG halves (§10)."""
    n_ref = n_ref.to(n.device, n.dtype, non_blocking=True)
    if n_ref.shape[0] == n.shape[0]:
        return n_ref
    if n_ref.shape[0] != 1:
        raise ArgumentError("n_ref",
                            f"bank entry batch {n_ref.shape[0]} fits neither batch 1 nor the branch batch {n.shape[0]}")
    return n_ref.expand(n.shape[0], -1, -1)


def replace_context(n: torch.Tensor, n_ref: torch.Tensor):
    """Mode 'replace' (move): K, V from the bank only. n [B, N, C], n_ref [1|B, N, C] -> (ctx, ctx) [B, N, C]."""
    ctx = _to(n_ref, n)
    return ctx, ctx


def concat_context(n: torch.Tensor, n_ref: torch.Tensor):
    """Mode 'concat' (drag): K, V from [n ; n_ref] along tokens. -> (ctx, ctx) [B, N + N_ref, C]."""
    ctx = torch.cat([n, _to(n_ref, n)], dim=1)
    return ctx, ctx


def masked_context(n: torch.Tensor, n_base: torch.Tensor, n_rep: torch.Tensor,
                   base_idx: torch.Tensor, rep_idx: torch.Tensor):
    """Mode 'masked' (appearance, paste): K, V from [n_base[~M_b] ; n_rep[M_r]]; own K, V dropped.

    n [B, N, C]; n_base, n_rep [1, N, C] from the two banks; base_idx, rep_idx: token indices from
    `masked_token_indices`, best made on the banks' device (else copied there). -> (ctx, ctx) [B, K_b + K_r, C].
    """
    base_idx = base_idx.to(n_base.device, non_blocking=True)
    rep_idx = rep_idx.to(n_rep.device, non_blocking=True)
    ctx = torch.cat([n_base.index_select(1, base_idx), n_rep.index_select(1, rep_idx)], dim=1)
    ctx = _to(ctx, n)
    return ctx, ctx


def source_context(n: torch.Tensor, num_groups: int = 1):
    """Mode 'source' (GoodDrag / DragDiffusion MasaCtrl): each item attends to its group's item 0 (gooddrag.md §1).

    n [B, N, C] is num_groups groups of [src, edit, ...] (one group per CFG half, as the official code splits
    uncond and cond pairs). -> (ctx, ctx) [B, N, C]; the source rows are unchanged by construction.
    """
    b, tokens, channels = n.shape
    if b % num_groups:
        raise ArgumentError("num_groups", f"batch {b} does not split into num_groups={num_groups}")
    grouped = n.view(num_groups, b // num_groups, tokens, channels)
    ctx = grouped[:, :1].expand_as(grouped).reshape(b, tokens, channels)
    return ctx, ctx


def token_grid(num_tokens: int, image_hw: tuple[int, int]) -> tuple[int, int]:
    """A layer's token grid (h_l, w_l) from its token count and the image (or latent) aspect: factor sqrt(HW/N)."""
    height, width = image_hw
    factor = math.sqrt(height * width / num_tokens)
    grid = (round(height / factor), round(width / factor))
    if grid[0] * grid[1] != num_tokens:
        raise ArgumentError("num_tokens",
                            f"{num_tokens} is no grid of a {height}x{width} image; pass the grid explicitly")
    return grid


def token_mask(mask: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """A mask [H, W] (0..1) as a row-major token mask bool [h_l * w_l]: nearest resize, then > 0.5 (§5)."""
    if mask.dim() != 2:
        raise ArgumentError("mask", f"must be [H, W], got shape {tuple(mask.shape)}")
    small = F.interpolate(mask[None, None].float(), size=tuple(grid_hw), mode="nearest")[0, 0]
    return (small > 0.5).flatten()


def masked_token_indices(mask_base: torch.Tensor, mask_rep: torch.Tensor, grid_hw: tuple[int, int],
                         device: str | torch.device = "cpu"):
    """Token indices (base_idx of ~M_b, rep_idx of M_r) of one layer for `masked_context`; once per run.

    Computed up front so the hot loop never syncs on a data-dependent shape. When both selections are empty
    (M_b everything, M_r empty) no key would be left; the base bank is then used whole (no replacement).
    """
    keep_base = ~token_mask(mask_base, grid_hw)
    take_rep = token_mask(mask_rep, grid_hw)
    if not keep_base.any() and not take_rep.any():
        keep_base = torch.ones_like(keep_base)
    return keep_base.nonzero().flatten().to(device), take_rep.nonzero().flatten().to(device)
