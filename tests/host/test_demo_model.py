"""The demo model: its training script (deterministic, learns at reduced size), its loader (an SD15 model config
the pack's nodes accept, unconditional, previews in its own colours), and the shipped weights (their quality as
recorded here, measured on the file by these tests: autoencoder, UNet, preview colours, inversion round trip)."""

import dataclasses

import pytest
import safetensors
import torch

from comfyui_dragedit.kernels.plan import PlanStep
from comfyui_dragedit.nodes import demo_model, host
from tests.support.comfy_inproc import run_node, run_passes
from tools import scenes, train_demo

REDUCED_SCALE = 0.05
# `tools/train_demo.py --scale 0.05` (seed 0, 2-core CPU) gives 22.85 dB and eps MSE 0.284 (an untrained UNet
# scores 1.0, the mean image ~10.7 dB); the bounds leave room for another machine's rounding.
REDUCED_MIN_PSNR_DB = 21.5
REDUCED_MAX_EPS_MSE = 0.4
# The shipped file (tools/train_demo.py at the full budget, seed 0) as these tests measure it on 8 held-out scenes
# (seed 777); README: the demo model. The tolerances cover another CPU's float rounding, not another training run.
SHIPPED_AUTOENCODER_PSNR_DB = 28.62
SHIPPED_PSNR_TOLERANCE_DB = 0.2
SHIPPED_EPS_MSE = 0.1249            # 8 timesteps, t=0's 0.81 the largest (train_demo's 64 give 0.050)
SHIPPED_EPS_MSE_TOLERANCE = 0.005
MAX_RECONSTRUCTION_LOSS_DB = 2.0   # inversion + reconstruction below the autoencoder, 2 scenes (1.7 measured)
SHIPPED_PREVIEW_PSNR_DB = 24.53     # the latent-to-RGB preview against the 8x-downsampled scene


def _held_out(count=8):
    """Scenes no training run saw (training uses seeds 0.. and seed+10000 for its own held-out set)."""
    return torch.from_numpy(scenes.training_images(777, count)).float() / 255.0


@pytest.fixture(scope="module")
def reduced(tmp_path_factory, comfy_nodes):
    out = tmp_path_factory.mktemp("demo") / "reduced.safetensors"
    report = train_demo.train(str(out), seed=0, scale=REDUCED_SCALE, log=lambda message: None)
    return out, report


def test_training_is_deterministic_in_its_seed(tmp_path, comfy_nodes):
    files = [tmp_path / f"run{k}.safetensors" for k in range(3)]
    for path, seed in zip(files, (0, 0, 1)):
        train_demo.train(str(path), seed=seed, scale=0.005, log=lambda message: None)
    a, b, c = (safetensors.torch.load_file(str(p)) for p in files)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a), "another seed gave the same weights"


def test_reduced_training_learns_both_models(reduced):
    _, report = reduced
    mean_image_psnr = train_demo.psnr(_held_out().mean(dim=(0, 1, 2), keepdim=True).expand(8, 128, 128, 3),
                                      _held_out())
    assert report["autoencoder_psnr_db"] >= max(REDUCED_MIN_PSNR_DB, mean_image_psnr + 1.5), report
    assert report["unet_heldout_eps_mse"] <= REDUCED_MAX_EPS_MSE, report  # an untrained UNet scores ~1.0


def test_loader_gives_an_sd15_model_the_nodes_accept_and_text_has_no_effect(reduced):
    model, clip, vae = host.load_demo_model(reduced[0])
    fam = host.family(model, "test")
    assert fam is host.DEMO and fam.name == host.SD1.name   # SD 1.x's layout, so SD 1.x feature taps serve it
    assert dataclasses.replace(fam, dragon_taps=host.SD1.dragon_taps) == host.SD1
    assert fam.dragon_taps == (7, 8) != host.SD1.dragon_taps
    with torch.inference_mode():
        empty = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        worded = clip.encode_from_tokens_scheduled(clip.tokenize("a red star"))
        latent = vae.encode(_held_out(1))
    assert latent.shape == (1, 4, 16, 16)
    z = model.model.process_latent_in(latent.float())
    random_context = [[torch.randn_like(empty[0][0]) * 5, {}]]
    step = PlanStep(25, 501, 481)
    eps = [run_passes(model, lambda p: p.eps(z, step), c, latent_hw=(16, 16))
           for c in (empty, worded, random_context)]
    assert torch.isfinite(eps[0]).all() and eps[0].abs().mean() > 0.05
    assert torch.equal(eps[0], eps[1]) and torch.equal(eps[0], eps[2])


@pytest.fixture(scope="module")
def shipped(comfy_nodes):
    if not demo_model.DEMO_MODEL_FILE.exists():
        pytest.fail(f"{demo_model.DEMO_MODEL_FILE} is missing: run `python -m tools.train_demo --out ...`",
                    pytrace=False)
    return host.load_demo_model(demo_model.DEMO_MODEL_FILE)


def test_shipped_autoencoder_has_its_recorded_quality(shipped):
    _, _, vae = shipped
    images = _held_out()
    with torch.inference_mode():
        decoded = vae.decode(vae.encode(images))
    measured = train_demo.psnr(decoded, images)
    assert abs(measured - SHIPPED_AUTOENCODER_PSNR_DB) <= SHIPPED_PSNR_TOLERANCE_DB, measured


def _held_out_latents(vae, model, count=8):
    with torch.inference_mode():
        return model.model.process_latent_in(vae.encode(_held_out(count)).float())


def test_shipped_unet_has_its_recorded_denoising_error(shipped):
    """eps MSE on held-out latents noised at 8 timesteps across the schedule with fixed noise, as the training
    script scores it."""
    model, clip, vae = shipped
    z0 = _held_out_latents(vae, model)
    with torch.inference_mode():
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    alphas = host.model_alphas_cumprod(model).float()
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(1))
    errors = []
    for k, t in enumerate(torch.linspace(0, 999, z0.shape[0]).round().long().tolist()):
        z_t = alphas[t].sqrt() * z0[k:k + 1] + (1 - alphas[t]).sqrt() * noise[k:k + 1]
        eps = run_passes(model, lambda p: p.eps(z_t, PlanStep(0, t, max(t - 20, -1))), cond, latent_hw=(16, 16))
        errors.append((eps.float().cpu() - noise[k:k + 1]).pow(2).mean().item())
    measured = sum(errors) / len(errors)
    assert abs(measured - SHIPPED_EPS_MSE) <= SHIPPED_EPS_MSE_TOLERANCE, (measured, errors)


def test_shipped_previews_show_the_scenes_colours(shipped):
    """The model's latent format (what ComfyUI's Latent2RGB previewer and the pack's previews use) maps latents to
    the scene's colours: its recorded quality, and far closer than SD-1.5's own factors on the same latents."""
    import comfy.latent_formats

    model, _, vae = shipped
    z0 = _held_out_latents(vae, model)
    truth = torch.nn.functional.avg_pool2d(_held_out().movedim(-1, 1), 8)
    fmt, sd15 = model.model.latent_format, comfy.latent_formats.SD15()
    previews = [train_demo.preview_rgb(dict(factors=f.latent_rgb_factors, bias=f.latent_rgb_factors_bias or [0] * 3),
                                       z0) for f in (fmt, sd15)]
    own, stock = (train_demo.psnr(p, truth) for p in previews)
    assert abs(own - SHIPPED_PREVIEW_PSNR_DB) <= SHIPPED_PSNR_TOLERANCE_DB, own
    assert own >= stock + 3.0, (own, stock)


def test_shipped_model_inverts_and_reconstructs_held_out_scenes(shipped):
    """DDIM inversion (50 steps) then the guided sampler with zero energy: the image comes back close to what the
    autoencoder alone gives. PSNR over both scenes' pixels: 30.5 dB against the autoencoder's 32.1 (1.7 dB) on these
    two; bench.drag_accuracy's 16 scenes give 28.01 against 29.00, issue 15's 1 dB just met."""
    from comfyui_dragedit.kernels.features import dragon_tap
    from comfyui_dragedit.nodes import energy_guidance, guided_sampler, inversion

    model, clip, vae = shipped
    images = _held_out(2)
    with torch.inference_mode():
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    scores = []
    for image in images:
        with torch.inference_mode():
            latent = {"samples": vae.encode(image[None])}
            roundtrip = vae.decode(latent["samples"])
        bank, _ = run_node(inversion.DragEditDDIMInversion, model=model, latent=latent, positive=cond, steps=50,
                           strength=1.0, layers="none", bank_device="offload (CPU)").result
        box = torch.zeros(1, 128, 128)
        box[:, 48:80, 48:80] = 1.0
        guidance = run_node(energy_guidance.DragEditEnergyGuidanceMove, mask=box, offset_x=0,
                            offset_y=0, w_edit=4.0, w_content=6.0, w_contrast=0.2, w_inpaint=0.8, energy_scale=0.0,
                            faithful_bugs=False, keep_latent_mean=True).result[0]
        out = run_node(guided_sampler.DragEditGuidedSampler, model=model, memory_bank=bank, guidance=guidance,
                       features=dragon_tap((5, 8), "SD 1.x"), positive=cond, negative=cond, cfg=1.0, seed=0, schedule="D",
                       sde_strength=0.0).result[0]
        with torch.inference_mode():
            decoded = vae.decode(out["samples"])
        scores.append((decoded, roundtrip))
    reconstructed, autoencoder = (train_demo.psnr(torch.cat(pair), images) for pair in zip(*scores))
    assert reconstructed >= autoencoder - MAX_RECONSTRUCTION_LOSS_DB, (reconstructed, autoencoder)
