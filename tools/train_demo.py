"""Trains the demo model from scratch on procedural scenes: a TAESD-layout autoencoder, then an unconditional
UNet with the SD-1.x block topology (epsilon-prediction, SD-1.5's noise schedule), and writes one safetensors
file that the DragEdit Demo Model node loads.

    .dev/venv/bin/python -m tools.train_demo --out demo_model/dragedit_demo.safetensors [--scale 1] [--seed 0]

Deterministic in --seed on a given device. --scale shrinks every budget (images and steps) for the CI test of
this script. The UNet is unconditional: its cross-attention (attn2) is zero and frozen, so the text context has
no effect, and the file leaves those weights out (the loader zeroes them); the pack's nodes treat the model as
any SD-1.x checkpoint.
"""
import argparse
import dataclasses
import json
import math
import time

import numpy as np
import torch

from tests.support.tiny_sd15 import init_default_weights
from tools import scenes

UNET_CONFIG = dict(image_size=16, in_channels=4, out_channels=4, model_channels=32, legacy=False,
                   use_spatial_transformer=True, use_checkpoint=False, adm_in_channels=None, context_dim=768,
                   use_linear_in_transformer=False, num_heads=-1, num_head_channels=32,
                   num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 3, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                   transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1,
                   use_temporal_resblock=False, use_temporal_attention=False)
LATENT_SCALE = 0.18215  # SD-1.5's latent format: the UNet sees raw latent * 0.18215 (comfy latent_formats.SD15)
UNET_PREFIX, VAE_PREFIX = "model.diffusion_model.", "first_stage_model."


@dataclasses.dataclass(frozen=True)
class Budget:
    """What one training run costs; --scale multiplies the counts. The choices were measured at reduced size on this
    2-core CPU (README: the demo model)."""
    images: int = 4000
    image_size: int = 128
    vae_steps: int = 9000       # 27.2 dB after 3000 steps (cosine over 3000); 0.22 s/step on one thread
    vae_batch: int = 4
    vae_crop: int = 64          # 64 px crops: 25.3 dB after 1000 steps, against 19.6 for 32 px crops (4x the batch)
    vae_lr: float = 1e-3        # and 22.3 for whole 128 px scenes (1500 steps); 2e-3 collapses
    latent_noise: float = 0.1   # relative to the latents' std: so slightly-off diffusion samples decode cleanly
    unet_steps: int = 2500      # 0.76 s/step on one thread
    unet_batch: int = 32
    unet_lr: float = 1e-3       # held-out eps MSE after 1500 steps: 0.0509 at 1e-3 (min-SNR 5), 0.0563 at 5e-4 (min-SNR
                                # 5), 0.0519 at 5e-4 without min-SNR, which kept the low-t error lower (0.132 vs 0.153)
    ema: float = 0.999

    def scaled(self, scale: float) -> "Budget":
        counts = ("images", "vae_steps", "unet_steps")
        return dataclasses.replace(self, **{k: max(8, round(getattr(self, k) * scale)) for k in counts})


def _comfy_modules():
    import comfy.ops
    import comfy.taesd.taesd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    return comfy.taesd.taesd.TAESD, UNetModel, comfy.ops.disable_weight_init


def _cosine_lr(optimizer, base_lr, step, total, warmup=100):
    lr = base_lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))
    for group in optimizer.param_groups:
        group["lr"] = lr


def _as_batch(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [0, 1], the autoencoder's input."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def _batches(generator, images, batch, crop=None):
    """Random uint8 images -> float [0, 1] NCHW batches (random crops when crop is set), forever."""
    n, size = images.shape[0], images.shape[1]
    while True:
        idx = torch.randint(0, n, (batch,), generator=generator)
        x = _as_batch(images[idx.numpy()])
        if crop:
            top, left = torch.randint(0, size - crop + 1, (2,), generator=generator).tolist()
            x = x[:, :, top:top + crop, left:left + crop]
        yield x


def _init_relu_residual(vae):
    """He init for the ReLU convolutions and each residual block's last convolution at zero, so every block starts
    as the identity: with torch's default init this deep, normalisation-free network stalls at the mean colour."""
    with torch.no_grad():
        for module in vae.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    module.bias.zero_()
        for module in vae.modules():
            if type(module).__name__ == "Block":
                module.conv[-1].weight.zero_()


def _autocast(device, enabled=True):
    """bfloat16 autocast: on this CPU (AVX-512 BF16) with channels-last tensors it halves the autoencoder's step
    time; the weights and the optimizer stay in float32. (The UNet gains 5% from it, so it trains in float32.)"""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=enabled)


def train_autoencoder(images, budget, generator, device, log):
    TAESD, _, _ = _comfy_modules()
    vae = TAESD(latent_channels=4)
    _init_relu_residual(vae)
    vae.to(device, memory_format=torch.channels_last).train()
    params = list(vae.taesd_encoder.parameters()) + list(vae.taesd_decoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=budget.vae_lr, weight_decay=0.0)
    batches = _batches(generator, images, budget.vae_batch, budget.vae_crop)
    for step in range(budget.vae_steps):
        _cosine_lr(optimizer, budget.vae_lr, step, budget.vae_steps)
        x = next(batches).to(device, memory_format=torch.channels_last)
        with _autocast(device):
            z = vae.taesd_encoder(x)
            noise = torch.randn(z.shape, generator=generator).to(device) * z.detach().float().std()
            y = vae.taesd_decoder(z + budget.latent_noise * noise).float()
        loss = (y - x).pow(2).mean() + 0.1 * (y - x).abs().mean() + 1e-4 * z.float().pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == budget.vae_steps - 1:
            log(f"autoencoder step {step}/{budget.vae_steps} loss {loss.item():.5f}")
    return vae.to(memory_format=torch.contiguous_format).eval()


@torch.no_grad()
def encode_all(vae, images, device, batch=64, fast=False):
    """Raw encoder outputs of every image, float32 [N, 4, h, w] on the CPU. fast: under bfloat16 autocast (the
    UNet's training latents, 2x quicker); otherwise in float32, as ComfyUI encodes (the held-out scores)."""
    out = []
    with _autocast(device, enabled=fast):
        for start in range(0, len(images), batch):
            x = _as_batch(images[start:start + batch]).to(device, memory_format=torch.channels_last)
            out.append(vae.taesd_encoder(x).float().cpu())
    return torch.cat(out)


def fit_latent_rgb(latents: torch.Tensor, images: np.ndarray) -> dict:
    """Least-squares latent-to-RGB preview factors: scaled latents [N, 4, h, w] -> the images' RGB in [-1, 1]
    averaged over each latent's 8x8 pixels, with a bias; {"factors": 4x3, "bias": 3}, as ComfyUI's
    Latent2RGB previewer applies them (rgb = latent @ factors + bias)."""
    target = torch.nn.functional.avg_pool2d(_as_batch(images), 8) * 2 - 1
    x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).double()
    x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
    y = target.permute(0, 2, 3, 1).reshape(-1, 3).double()
    solution = torch.linalg.lstsq(x, y).solution
    return dict(factors=[[round(v, 5) for v in row] for row in solution[:-1].tolist()],
                bias=[round(v, 5) for v in solution[-1].tolist()])


def preview_rgb(latent_rgb: dict, latents: torch.Tensor) -> torch.Tensor:
    """What the Latent2RGB preview shows for scaled latents [N, 4, h, w]: RGB [N, 3, h, w] in [0, 1]."""
    factors, bias = torch.tensor(latent_rgb["factors"]), torch.tensor(latent_rgb["bias"])
    rgb = torch.einsum("nchw,cd->ndhw", latents.float(), factors) + bias.view(1, 3, 1, 1)
    return rgb.add(1).div(2).clamp(0, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1]."""
    mse = (a.clamp(0, 1) - b.clamp(0, 1)).pow(2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def build_unet(device):
    """The demo UNet at default init: attn2 zeroed and frozen (unconditional), last conv zero as in SD."""
    _, UNetModel, ops = _comfy_modules()
    unet = UNetModel(**UNET_CONFIG, dtype=torch.float32, device="cpu", operations=ops)
    init_default_weights(unet.modules())
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if ".attn2." in name:
                p.zero_()
                p.requires_grad_(False)
        unet.out[-1].weight.zero_()
        unet.out[-1].bias.zero_()
    return unet.to(device)


def train_unet(latents, budget, generator, device, log):
    """epsilon-prediction on scaled latents with SD-1.5's alphas_cumprod; returns the EMA weights' UNet."""
    from comfyui_dragedit.kernels.schedule import scaled_linear_alphas_cumprod

    unet = build_unet(device).train()
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=budget.unet_lr, weight_decay=0.0)
    alpha_bar = scaled_linear_alphas_cumprod().float()
    context = torch.zeros(budget.unet_batch, 1, UNET_CONFIG["context_dim"], device=device)
    for step in range(budget.unet_steps):
        _cosine_lr(optimizer, budget.unet_lr, step, budget.unet_steps)
        idx = torch.randint(0, latents.shape[0], (budget.unet_batch,), generator=generator)
        t = torch.randint(0, alpha_bar.numel(), (budget.unet_batch,), generator=generator)
        eps = torch.randn(latents[idx].shape, generator=generator)
        a = alpha_bar[t].view(-1, 1, 1, 1)
        z_t = (a.sqrt() * latents[idx] + (1 - a).sqrt() * eps).to(device)
        loss = (unet(z_t, t.float().to(device), context) - eps.to(device)).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            decay = min(budget.ema, (1 + step) / (10 + step))
            for k, v in unet.state_dict().items():
                ema[k].lerp_(v.detach(), 1 - decay)
        if step % 100 == 0 or step == budget.unet_steps - 1:
            log(f"unet step {step}/{budget.unet_steps} loss {loss.item():.5f}")
    unet.load_state_dict(ema)
    return unet.eval()


@torch.no_grad()
def sample(unet, vae, count, seed, device, steps=50):
    """DDIM samples of the unconditional UNet, decoded: float [count, 3, H, W] in [0, 1]."""
    from comfyui_dragedit.kernels.ddim import denoise
    from comfyui_dragedit.kernels.plan import ddim_plan
    from comfyui_dragedit.kernels.schedule import scaled_linear_alphas_cumprod

    size = UNET_CONFIG["image_size"]
    z = torch.randn(count, 4, size, size, generator=torch.Generator().manual_seed(seed)).to(device)
    context = torch.zeros(count, 1, UNET_CONFIG["context_dim"], device=device)
    eps_fn = lambda z_t, step: unet(z_t, torch.full((count,), float(step.t), device=device), context)  # noqa: E731
    z0 = denoise(eps_fn, z, ddim_plan(steps), scaled_linear_alphas_cumprod())
    return decode(vae, z0)


def decode(vae, scaled_latents):
    """Scaled latents (what the UNet sees) -> images in [0, 1], through ComfyUI's own TAESD.decode."""
    return vae.decode(scaled_latents / LATENT_SCALE).add(1).div(2).clamp(0, 1)


def state_dict_to_save(unet, vae):
    """The file's tensors in fp16: UNet without attn2, the autoencoder with its scale and shift."""
    sd = {UNET_PREFIX + k: v for k, v in unet.state_dict().items() if ".attn2." not in k}
    sd.update({VAE_PREFIX + k: v for k, v in vae.state_dict().items()})
    return {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in sd.items()}


def grid(images: torch.Tensor, per_row: int = 8, gap: int = 2) -> np.ndarray:
    """[N, 3, H, W] in [0, 1] -> one uint8 HxWx3 grid with white gaps."""
    n, _, h, w = images.shape
    rows = math.ceil(n / per_row)
    canvas = np.full((rows * (h + gap) - gap, per_row * (w + gap) - gap, 3), 255, np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, per_row)
        canvas[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = \
            (img.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return canvas


def train(out, seed=0, scale=1.0, device="cpu", samples_path=None, log=print):
    """Train both models, write the file; returns the report written into its metadata."""
    import safetensors.torch
    from tests.support.pack import load_pack

    load_pack()
    from comfyui_dragedit.kernels.schedule import scaled_linear_alphas_cumprod
    from comfyui_dragedit.nodes import host

    budget = Budget().scaled(scale)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    images = scenes.training_images(seed, budget.images, budget.image_size)
    held_out = scenes.training_images(seed + 10_000, 64, budget.image_size)
    log(f"{budget.images} training scenes in {time.perf_counter() - started:.0f} s")

    vae = train_autoencoder(images, budget, generator, device, log)
    raw = encode_all(vae, images, device, fast=True)
    mean, std = raw.mean().item(), raw.std().item()
    with torch.no_grad():  # scaled latent = (raw - mean) / std; ComfyUI computes raw*0.18215 from enc/vae_scale + shift
        vae.vae_scale.fill_(LATENT_SCALE * std)
        vae.vae_shift.fill_(-mean / (LATENT_SCALE * std))
    latents = (raw - mean) / std
    held_latents = ((encode_all(vae, held_out, device) - mean) / std).to(device)
    with torch.no_grad():
        vae_psnr = psnr(decode(vae, held_latents).cpu(), _as_batch(held_out))
    latent_rgb = fit_latent_rgb(latents, images)
    preview_psnr = psnr(preview_rgb(latent_rgb, held_latents.cpu()),
                        torch.nn.functional.avg_pool2d(_as_batch(held_out), 8))
    vae_s = time.perf_counter() - started
    log(f"autoencoder: held-out PSNR {vae_psnr:.2f} dB, latent mean {mean:.3f} std {std:.3f}, preview "
        f"(latent to RGB) {preview_psnr:.2f} dB against the 8x-downsampled scenes, {vae_s:.0f} s")

    unet = train_unet(latents, budget, generator, device, log)
    with torch.no_grad():  # the denoising loss on held-out latents at fixed t and noise: the UNet's quality number
        g = torch.Generator().manual_seed(seed + 1)
        t = torch.linspace(0, 999, held_latents.shape[0]).round().long()
        eps = torch.randn(held_latents.shape, generator=g).to(device)
        a = scaled_linear_alphas_cumprod().float()[t].view(-1, 1, 1, 1).to(device)
        context = torch.zeros(t.numel(), 1, UNET_CONFIG["context_dim"], device=device)
        pred = unet(a.sqrt() * held_latents + (1 - a).sqrt() * eps, t.float().to(device), context)
        held_loss = (pred - eps).pow(2).mean().item()
    total_s = time.perf_counter() - started
    report = dict(seed=seed, scale=scale, device=str(device), budget=dataclasses.asdict(budget),
                  autoencoder_psnr_db=round(vae_psnr, 2), preview_psnr_db=round(preview_psnr, 2),
                  unet_heldout_eps_mse=round(held_loss, 5),
                  seconds=round(total_s), torch=torch.__version__)
    log(f"unet: held-out eps MSE {held_loss:.5f}; total {total_s:.0f} s")
    metadata = {host.DEMO_UNET_CONFIG_KEY: json.dumps(UNET_CONFIG), host.DEMO_LATENT_RGB_KEY: json.dumps(latent_rgb),
                "dragedit.training": json.dumps(report)}
    safetensors.torch.save_file(state_dict_to_save(unet, vae), out, metadata=metadata)
    if samples_path:
        from PIL import Image
        Image.fromarray(grid(sample(unet, vae, 16, seed, device))).save(samples_path)
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="safetensors file to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the full budget (the tests: 0.05 and 0.005)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--samples", help="also write a grid PNG of 16 DDIM samples here")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (0: torch's default). 1 by default: on this shared 2-core CPU two threads "
                         "ran the autoencoder's step 15x slower (3.3 s against 0.22 s) while other jobs ran")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    from tests.support import comfy_inproc
    comfy_inproc.import_comfy(cpu=args.device == "cpu")
    started = time.perf_counter()
    print(json.dumps(train(args.out, args.seed, args.scale, args.device, args.samples,
                           log=lambda m: print(f"[{time.perf_counter() - started:5.0f} s] {m}", flush=True))))


if __name__ == "__main__":
    main()
