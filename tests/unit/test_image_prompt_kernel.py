"""DiffEditor's image prompt in plain torch (kernels/image_prompt.py): the official file's layout (written out here
from the official code, not from the kernel), the safe reader, the Resampler against an independent formulation,
and the injected attention term."""
import math

import pytest
import torch

from comfyui_dragedit.kernels import image_prompt as ip
from comfyui_dragedit.kernels.errors import ArgumentError
from tests.support.image_prompt_file import (OFFICIAL_IMAGE_PROJ, OFFICIAL_IP_ADAPTER, SD15_WIDTHS, CodePayload,
                                             random_official_state_dict)


def test_layout_is_the_official_files():
    layout = ip.official_layout()
    assert layout == {"image_proj": OFFICIAL_IMAGE_PROJ, "ip_adapter": OFFICIAL_IP_ADAPTER}
    params = sum(math.prod(s) for group in layout.values() for s in group.values())
    assert abs(params * 4 / 1e6 - 197) < 1.0   # 197 MB in fp32: the released file's size


def test_a_file_in_the_official_layout_loads_and_gives_64_tokens_of_768():
    model = ip.ImagePromptModel.from_state_dict(random_official_state_dict())
    assert len(model.layers) == 16
    assert [w_k.shape[0] for w_k, _ in model.layers] == SD15_WIDTHS
    tokens = model.tokens(torch.randn(2, 257, 1280))
    assert tokens.shape == (2, 64, 768) and tokens.dtype == torch.float32 and torch.isfinite(tokens).all()


def _reference_resampler(sd, x):
    """The official Resampler written as plain tensor algebra on the state dict (q*s @ (k*s)^T with s = d^-1/4)."""
    ln = torch.nn.functional.layer_norm

    def norm(t, prefix):
        return ln(t, (t.shape[-1],), sd[f"{prefix}.weight"], sd[f"{prefix}.bias"])

    x = x @ sd["proj_in.weight"].T + sd["proj_in.bias"]
    latents = sd["latents"].repeat(x.shape[0], 1, 1)
    for i in range(4):
        p = f"layers.{i}"
        xn, ln_ = norm(x, f"{p}.0.norm1"), norm(latents, f"{p}.0.norm2")
        q = ln_ @ sd[f"{p}.0.to_q.weight"].T
        k, v = (torch.cat([xn, ln_], 1) @ sd[f"{p}.0.to_kv.weight"].T).chunk(2, dim=-1)
        b, n, _ = q.shape
        q, k, v = (t.view(b, -1, 12, 64).transpose(1, 2) for t in (q, k, v))
        s = 64 ** -0.25
        w = torch.softmax((q * s) @ (k * s).transpose(-2, -1), dim=-1)
        out = (w @ v).permute(0, 2, 1, 3).reshape(b, n, -1) @ sd[f"{p}.0.to_out.weight"].T
        latents = out + latents
        h = norm(latents, f"{p}.1.0") @ sd[f"{p}.1.1.weight"].T
        latents = torch.nn.functional.gelu(h) @ sd[f"{p}.1.3.weight"].T + latents
    return norm(latents @ sd["proj_out.weight"].T + sd["proj_out.bias"], "norm_out")


def test_resampler_matches_the_official_algebra():
    sd = {k: v.float() for k, v in random_official_state_dict(3)["image_proj"].items()}
    model = ip.ImagePromptModel.from_state_dict(random_official_state_dict(3))
    x = torch.randn(2, 257, 1280, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.tokens(x), _reference_resampler(sd, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("edit, expected", [
    (lambda sd: sd["ip_adapter"].pop("31.to_v_ip.weight"), "ip_adapter missing: 31.to_v_ip.weight"),
    (lambda sd: sd["image_proj"].update(extra=torch.zeros(1)), "image_proj foreign: extra"),
    (lambda sd: sd["ip_adapter"].update({"1.to_k_ip.weight": torch.zeros(640, 768)}),
     "ip_adapter wrong shape: 1.to_k_ip.weight (640, 768) (expected (320, 768))"),
    (lambda sd: sd["image_proj"].update(latents=[1, 2]), "image_proj not tensors: latents"),
    (lambda sd: sd.update(lora={}), "foreign group 'lora'"),
    (lambda sd: sd.pop("image_proj"), "no 'image_proj' group"),
])
def test_missing_foreign_or_misshaped_keys_are_refused_by_name(edit, expected):
    sd = random_official_state_dict()
    edit(sd)
    with pytest.raises(ArgumentError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        ip.check_state_dict(sd)


def test_reader_takes_the_released_pickle_and_safetensors(tmp_path):
    sd = random_official_state_dict()
    torch.save(sd, tmp_path / "ip_sd15_64.bin")
    loaded = ip.read_state_dict(str(tmp_path / "ip_sd15_64.bin"))
    ip.check_state_dict(loaded)
    assert torch.equal(loaded["ip_adapter"]["5.to_k_ip.weight"], sd["ip_adapter"]["5.to_k_ip.weight"])
    import safetensors.torch

    flat = {f"{group}.{k}": v for group, tensors in sd.items() for k, v in tensors.items()}
    safetensors.torch.save_file(flat, str(tmp_path / "ip.safetensors"))
    ip.check_state_dict(ip.read_state_dict(str(tmp_path / "ip.safetensors")))


def test_a_pickle_that_is_not_plain_tensors_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    bad = tmp_path / "bad.bin"
    torch.save({"image_proj": {"latents": CodePayload(str(marker))}, "ip_adapter": {}}, bad)
    with pytest.raises(ArgumentError, match=r"not a plain tensor file: .*\(Unsupported global: GLOBAL io.open\)$"):
        ip.read_state_dict(str(bad))
    assert not marker.exists()
    with open(tmp_path / "junk.bin", "wb") as f:
        f.write(b"not a pickle at all")
    with pytest.raises(ArgumentError, match="not a plain tensor file"):
        ip.read_state_dict(str(tmp_path / "junk.bin"))
    torch.save([torch.zeros(1)], tmp_path / "list.bin")
    with pytest.raises(ArgumentError, match="holds a list"):
        ip.read_state_dict(str(tmp_path / "list.bin"))


def test_batch_tokens_follow_the_cfg_order():
    cond, uncond = torch.ones(1, 2, 3), -torch.ones(1, 2, 3)
    batch = ip.batch_tokens(cond, uncond, [1, 0], 4)
    assert batch.shape == (4, 2, 3)
    assert (batch[:2] == -1).all() and (batch[2:] == 1).all()
    assert (ip.batch_tokens(cond, uncond, [0], 2) == 1).all()


def test_the_term_is_attention_over_the_projected_tokens():
    g = torch.Generator().manual_seed(0)
    q, tokens = torch.randn(2, 10, 320, generator=g), torch.randn(2, 64, 768, generator=g)
    w_k, w_v = torch.randn(320, 768, generator=g) / 28, torch.randn(320, 768, generator=g) / 28
    heads, d = 8, 40
    k, v = tokens @ w_k.T, tokens @ w_v.T
    split = [t.view(2, -1, heads, d).transpose(1, 2) for t in (q, k, v)]
    weights = torch.softmax(split[0] @ split[1].transpose(-1, -2) / math.sqrt(d), dim=-1)
    expected = (weights @ split[2]).transpose(1, 2).reshape(2, 10, 320)
    torch.testing.assert_close(ip.image_prompt_term(q, tokens, w_k, w_v, heads), expected, rtol=1e-4, atol=1e-5)
