"""DiffEditor's image prompt, an IP-Adapter variant: the official file's layout, its Resampler, and the term it adds
to every cross-attention (dragondiffusion.md §6 "Image prompt", official dragondiff.py:L38-111,
attention_processor.py:L130-350).

64 tokens of 768 come from a Perceiver Resampler (64 queries, depth 4, 12 heads x 64, ff x4) over the CLIP ViT-H/14
penultimate hidden states (257 x 1280) of the image at 256 px; the uncond tokens from all-zero pixel values. Each SD
cross-attention then adds `scale * attention(q, to_k_ip(tokens), to_v_ip(tokens))` to its text attention, with its
own to_k_ip / to_v_ip, on the plan's image-prompt steps only (10 <= i < 20 of 50).

The file `ip_sd15_64.bin` is {"image_proj": Resampler state, "ip_adapter": ModuleList state}: the ModuleList holds
the UNet's attention processors in diffusers order (down blocks, up blocks, then the mid block; attn1 then attn2 in
each transformer block), so the k-th cross-attention's weights are at index 2k + 1 (attn1's processors have none).
"""
import dataclasses
import pickle

import torch
import torch.nn.functional as F

from .errors import ArgumentError

NUM_TOKENS = 64
TOKEN_DIM = 768              # the Resampler's width and output: SD 1.5's cross-attention context width
DEPTH, HEADS, DIM_HEAD, FF_MULT = 4, 12, 64, 4
CLIP_WIDTH, CLIP_TOKENS = 1280, 257       # ViT-H/14 at 224 px: 16 x 16 patches + the class token
IMAGE_SIZE = 256                          # the official code resizes the image to 256 x 256 first
IP_SCALE = 0.1                            # 0.05 for faces (dragondiffusion.md §7)
# Width (heads x dim_head) of SD 1.5's 16 cross-attentions in diffusers order: down_blocks 0-2 (two each),
# up_blocks 1-3 (three each), mid_block.
SD15_CROSS_ATTENTION_WIDTHS = (320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320, 1280)


def ip_layer_index(k: int) -> int:
    """Index in the file's "ip_adapter" ModuleList of the k-th cross-attention (diffusers order)."""
    return 2 * k + 1


class PerceiverAttention(torch.nn.Module):
    """The queries (latents) attend to the image features and to themselves (keys and values over both)."""

    def __init__(self, dim: int = TOKEN_DIM, heads: int = HEADS, dim_head: int = DIM_HEAD):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm1 = torch.nn.LayerNorm(dim)
        self.norm2 = torch.nn.LayerNorm(dim)
        self.to_q = torch.nn.Linear(dim, inner, bias=False)
        self.to_kv = torch.nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = torch.nn.Linear(inner, dim, bias=False)

    def forward(self, x, latents):
        x, latents = self.norm1(x), self.norm2(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        return self.to_out(attention(self.to_q(latents), k, v, self.heads))


class Resampler(torch.nn.Module):
    """Image features [B, 257, 1280] -> [B, 64, 768] tokens; parameter names are the official file's."""

    def __init__(self, dim: int = TOKEN_DIM, depth: int = DEPTH, heads: int = HEADS, dim_head: int = DIM_HEAD,
                 num_queries: int = NUM_TOKENS, embedding_dim: int = CLIP_WIDTH, output_dim: int = TOKEN_DIM,
                 ff_mult: int = FF_MULT):
        super().__init__()
        self.latents = torch.nn.Parameter(torch.randn(1, num_queries, dim) / dim ** 0.5)
        self.proj_in = torch.nn.Linear(embedding_dim, dim)
        self.proj_out = torch.nn.Linear(dim, output_dim)
        self.norm_out = torch.nn.LayerNorm(output_dim)
        self.layers = torch.nn.ModuleList(
            torch.nn.ModuleList([PerceiverAttention(dim, heads, dim_head), torch.nn.Sequential(
                torch.nn.LayerNorm(dim), torch.nn.Linear(dim, dim * ff_mult, bias=False), torch.nn.GELU(),
                torch.nn.Linear(dim * ff_mult, dim, bias=False))])
            for _ in range(depth))

    def forward(self, x):
        latents = self.latents.expand(x.shape[0], -1, -1)
        x = self.proj_in(x)
        for attend, feed_forward in self.layers:
            latents = attend(x, latents) + latents
            latents = feed_forward(latents) + latents
        return self.norm_out(self.proj_out(latents))


def attention(q, k, v, heads: int):
    """softmax(q k^T / sqrt(d)) v per head, on [B, N, heads * d] tensors (the host passes ComfyUI's op instead)."""
    b, n, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, inner)


def official_layout(widths=SD15_CROSS_ATTENTION_WIDTHS) -> dict:
    """{"image_proj": {key: shape}, "ip_adapter": {key: shape}}: every tensor of the official file."""
    with torch.device("meta"):
        image_proj = {k: tuple(v.shape) for k, v in Resampler().state_dict().items()}
    ip_adapter = {f"{ip_layer_index(k)}.{name}.weight": (width, TOKEN_DIM)
                  for k, width in enumerate(widths) for name in ("to_k_ip", "to_v_ip")}
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def read_state_dict(path: str) -> dict:
    """The file's tensors as {"image_proj": {...}, "ip_adapter": {...}}, read without arbitrary unpickling.

    .safetensors: flat "image_proj.<key>" / "ip_adapter.<key>" names (IP-Adapter's safetensors convention).
    Anything else goes through torch.load(weights_only=True): plain containers and tensors only; any other
    object in the pickle is refused. Raises ArgumentError('path', what was wrong).
    """
    if str(path).endswith(".safetensors"):
        import safetensors.torch

        try:
            flat = safetensors.torch.load_file(str(path))
        except Exception as err:  # safetensors raises its own error types for a corrupt header
            raise ArgumentError("path", f"is not a readable .safetensors file ({err})") from None
        nested = {}
        for key, value in flat.items():
            group, _, name = key.partition(".")
            nested.setdefault(group, {})[name] = value
        return nested
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as err:
        raise ArgumentError("path", f"is not a plain tensor file: the safe loader refused it "
                                    f"({_unpickling_reason(err)})") from None
    if not isinstance(loaded, dict):
        raise ArgumentError("path", f"holds a {type(loaded).__name__}, not a dict of tensors")
    return loaded


def _unpickling_reason(err: Exception) -> str:
    """The line of torch's weights-only refusal that says what it met (e.g. 'Unsupported global: GLOBAL io.open')."""
    text = str(err).strip()
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].strip()
    return (text.splitlines() or [type(err).__name__])[0].split(" was not an allowed global")[0]


def check_state_dict(sd: dict, widths=SD15_CROSS_ATTENTION_WIDTHS) -> None:
    """Raises ArgumentError('state_dict', ...) unless `sd` has exactly the official keys, each a tensor of the official
    shape; the detail lists what is missing, foreign, not a tensor or misshaped."""
    layout = official_layout(widths)
    problems = []
    for group in sorted(set(sd) | set(layout)):
        if group not in layout:
            problems.append(f"foreign group '{group}'")
            continue
        tensors = sd.get(group)
        if not isinstance(tensors, dict):
            problems.append(f"no '{group}' group of tensors")
            continue
        missing = [k for k in layout[group] if k not in tensors]
        foreign = [k for k in tensors if k not in layout[group]]
        not_tensors = [k for k in tensors if k in layout[group] and not isinstance(tensors[k], torch.Tensor)]
        wrong = [f"{k} {tuple(tensors[k].shape)} (expected {layout[group][k]})" for k in tensors
                 if k in layout[group] and k not in not_tensors and tuple(tensors[k].shape) != layout[group][k]]
        for label, keys in (("missing", missing), ("foreign", foreign), ("not tensors", not_tensors),
                            ("wrong shape", wrong)):
            if keys:
                more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
                problems.append(f"{group} {label}: {', '.join(keys[:3])}{more}")
    if problems:
        raise ArgumentError("state_dict", "; ".join(problems))


@dataclasses.dataclass(frozen=True, eq=False)
class ImagePromptModel:
    """The loaded file: the Resampler and, per cross-attention in diffusers order, (to_k_ip, to_v_ip) [width, 768]."""

    resampler: Resampler
    layers: tuple

    @classmethod
    def from_state_dict(cls, sd: dict, widths=SD15_CROSS_ATTENTION_WIDTHS) -> "ImagePromptModel":
        check_state_dict(sd, widths)
        resampler = Resampler()
        resampler.load_state_dict({k: v.float() for k, v in sd["image_proj"].items()}, strict=True)
        resampler.eval().requires_grad_(False)
        ip = sd["ip_adapter"]
        layers = tuple((ip[f"{ip_layer_index(k)}.to_k_ip.weight"].float(),
                        ip[f"{ip_layer_index(k)}.to_v_ip.weight"].float()) for k in range(len(widths)))
        return cls(resampler, layers)

    def tokens(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[B, 64, 768] image-prompt tokens of CLIP penultimate hidden states [B, 257, 1280]."""
        with torch.no_grad():
            return self.resampler(hidden_states.float())


@dataclasses.dataclass(frozen=True, eq=False)
class ImagePrompt:
    """What the sampler injects: the IP tokens (cond from the image, uncond from zero pixels), [1, 64, 768] each;
    the per-layer weights; the scale. two_images: made from a second image (appearance / paste), whose tokens these
    are. `text_tokens` (cond, uncond) is set only with faithful_bugs in the two-image modes: the base image's
    tokens, appended to the text context as the official code does (§9 item 7)."""

    cond: torch.Tensor
    uncond: torch.Tensor
    layers: tuple
    scale: float = IP_SCALE
    text_tokens: tuple | None = None
    two_images: bool = False


def batch_tokens(cond: torch.Tensor, uncond: torch.Tensor, cond_or_uncond, batch: int) -> torch.Tensor:
    """[batch, T, C] tokens for a ComfyUI batch made of len(cond_or_uncond) equal chunks (0 = cond, 1 = uncond)."""
    chunk = batch // len(cond_or_uncond)
    return torch.cat([(cond if c == 0 else uncond).expand(chunk, -1, -1) for c in cond_or_uncond])


def image_prompt_term(q: torch.Tensor, tokens: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor, heads: int,
                      attention_fn=attention) -> torch.Tensor:
    """attention(q, to_k_ip(tokens), to_v_ip(tokens)): the term a cross-attention adds, scaled, before to_out.

    q: [B, N, heads * d] (after to_q); tokens: [B, T, 768]; w_k, w_v: [heads * d, 768]. Returns [B, N, heads * d].
    """
    tokens = tokens.to(q)
    return attention_fn(q, F.linear(tokens, w_k.to(q)), F.linear(tokens, w_v.to(q)), heads)
