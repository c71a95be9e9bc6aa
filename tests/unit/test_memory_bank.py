"""MemoryBank and BankRecorder: indexing (dragondiffusion.md §11.2), immutability, size (§1.1), compatibility."""
import copy
import dataclasses

import pytest
import torch

from comfyui_dragedit.kernels import ddim, memory_bank, plan
from comfyui_dragedit.kernels.schedule import ddim_timesteps, scaled_linear_alphas_cumprod, sigma_from_alpha_bar

AC = scaled_linear_alphas_cumprod()
LAYERS = [("output", k) for k in range(3, 12)]
# SD-1.5 decoder self-attention: (downscale vs the latent, channels) of output blocks 3..11 (dragondiffusion.md §5)
SD15_DECODER = [(4, 1280)] * 3 + [(2, 640)] * 3 + [(1, 320)] * 3
TINY = [(2, 8)] * 3 + [(1, 4)] * 3   # a tiny decoder on an 8x8 latent


def invert_into_bank(num_steps=50, strength=1.0, latent=(1, 4, 8, 8), layers=TINY, **recorder_kw):
    """Run `ddim.invert` with a stub UNet whose attn1 patch records n, as the host wires it."""
    rec = memory_bank.BankRecorder(**recorder_kw)
    z0 = torch.randn(*latent, generator=torch.Generator().manual_seed(0))
    h, w = latent[-2:]

    def eps_fn(z, step):
        for k, (down, channels) in enumerate(layers):
            n = torch.full((latent[0], (h // down) * (w // down), channels), float(step.t))
            rec.record(step.t, ("output", 3 + k), n)
        return torch.sin(z + step.t)

    rec.record_latent(memory_bank.Z0, z0)
    latents = ddim.invert(eps_fn, z0, AC, num_steps, strength,
                          callback=lambda info: rec.record_latent(info["t"], info["z"]))
    return rec.finish(AC, "sd15:abc"), latents


@pytest.fixture(scope="module")
def bank_and_latents():
    return invert_into_bank()


def test_indexing_matches_inversion(bank_and_latents):
    bank, latents = bank_and_latents
    assert bank.timesteps == tuple(ddim_timesteps(50))
    for step in plan.ddim_plan(50):
        torch.testing.assert_close(bank.latent(step.t), latents[-(step.i + 1)].float(), rtol=0, atol=0)
        # the entry used at edit step i was recorded at t_i
        assert float(bank.attention_input(step.t, ("output", 3)).flatten()[0]) == float(step.t)
    torch.testing.assert_close(bank.latent(-1), latents[0])
    assert bank.z0 is bank.latent(-1)
    assert bank.layers == tuple(LAYERS[:6]) and bank.latent_shape == (1, 4, 8, 8)


def test_dtypes_and_device(bank_and_latents):
    bank, _ = bank_and_latents
    assert bank.attention_input(981, ("output", 5)).dtype == torch.float16
    assert bank.latent(981).dtype == torch.float32 and bank.device == "cpu"
    assert bank.alphas_cumprod.dtype == torch.float64


def test_missing_entries_raise(bank_and_latents):
    bank, _ = bank_and_latents
    with pytest.raises(ValueError, match="t: 980"):
        bank.latent(980)
    with pytest.raises(ValueError, match="output"):
        bank.attention_input(981, ("output", 11))


def test_strength_bank_holds_only_inverted_steps():
    bank, latents = invert_into_bank(strength=0.75)
    assert bank.timesteps[0] == 741 and len(bank.timesteps) == 38
    torch.testing.assert_close(bank.latent(741), latents[-1].float())


def test_bank_is_immutable_and_shared(bank_and_latents):
    bank, _ = bank_and_latents
    with pytest.raises(dataclasses.FrozenInstanceError):
        bank.fingerprint = "other"
    with pytest.raises(TypeError):
        bank.latents[981] = torch.zeros(1)
    assert copy.deepcopy(bank) is bank and copy.copy(bank) is bank
    assert copy.deepcopy({"dragedit": bank})["dragedit"] is bank


def test_recorder_copies_instead_of_aliasing():
    rec = memory_bank.BankRecorder(dtype=torch.float32)
    n = torch.ones(1, 4, 2)
    z = torch.ones(1, 4, 2, 2)
    rec.record(1, "a", n)
    rec.record_latent(-1, z)
    rec.record_latent(1, z)
    n.zero_()
    z.zero_()
    bank = rec.finish(AC, "fp")
    assert float(bank.attention_input(1, "a").sum()) == 8.0 and float(bank.z0.sum()) == 16.0


def test_recorder_filters_layers_and_refuses_duplicates():
    rec = memory_bank.BankRecorder(layers=[("output", 4)])
    rec.record(1, ("output", 3), torch.ones(1, 2, 2))
    rec.record(1, ("output", 4), torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match="twice"):
        rec.record(1, ("output", 4), torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match="z0"):
        rec.finish(AC, "fp")
    rec.record_latent(-1, torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="inverted latent"):
        rec.finish(AC, "fp")
    rec.record_latent(1, torch.zeros(1, 4, 2, 2))
    bank = rec.finish(AC, "fp")
    assert list(bank.attention) == [(1, ("output", 4))] and bank.layers == (("output", 4),)


def test_lookup_by_sigma(bank_and_latents):
    bank, _ = bank_and_latents
    for t in (981, 741, 21, 1):
        assert bank.nearest_t(bank.sigma(t)) == t
    # sigma of a non-inverted t maps to the nearest inverted one
    assert bank.nearest_t(float(sigma_from_alpha_bar(AC[745]))) == 741
    assert bank.nearest_t(float(sigma_from_alpha_bar(AC[999]))) == 981
    assert bank.sigma(-1) == pytest.approx(0.029, abs=5e-4)


def test_check_compatible(bank_and_latents):
    bank, _ = bank_and_latents
    bank.check_compatible("sd15:abc", (2, 4, 8, 8))      # batch is free: CFG halves share the bank
    bank.check_compatible("sd15:abc", (4, 8, 8))
    with pytest.raises(ValueError, match="model.*sd15:abc.*sdxl"):
        bank.check_compatible("sdxl", (1, 4, 8, 8))
    with pytest.raises(ValueError, match="latent_shape.*\\(4, 8, 8\\).*\\(4, 16, 8\\)"):
        bank.check_compatible("sd15:abc", (1, 4, 16, 8))


def test_size_against_official_layout():
    # dragondiffusion.md §1.1: K+V post-projection is 27.5 MB/step at 512² and 61.9 MB at 768²; n alone is half
    official_512 = memory_bank.bank_bytes_per_step((64, 64), SD15_DECODER, key_and_value=True)
    official_768 = memory_bank.bank_bytes_per_step((96, 96), SD15_DECODER, key_and_value=True)
    assert official_512 / 1e6 == pytest.approx(27.5, abs=0.05)
    assert official_768 / 1e6 == pytest.approx(61.9, abs=0.05)
    assert memory_bank.bank_bytes_per_step((64, 64), SD15_DECODER) * 2 == official_512


def test_nbytes_matches_the_per_step_formula():
    bank, _ = invert_into_bank(num_steps=5, latent=(1, 4, 16, 16), layers=SD15_DECODER[:6])
    per_step = memory_bank.bank_bytes_per_step((16, 16), SD15_DECODER[:6])
    latents = 6 * 4 * 16 * 16 * 4
    assert bank.nbytes == 5 * per_step + latents
