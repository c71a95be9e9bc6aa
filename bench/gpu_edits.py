"""Whole edits on a GPU against the GPU's own limits, measured in the same run (perf_audit.md, "A GPU protocol").

    python -m bench.gpu_edits [--out results.txt] [--size 512] [--runs 3] [--sdxl]
    .dev/venv/bin/python -m bench.gpu_edits --profile test --size 64 --runs 1     # the script itself, on the CPU

1. The machine: torch, cuDNN, GPU. The full SD-1.5 UNet at random weights (cost does not depend on the values),
   fp16 as ComfyUI loads SD-1.5 on CUDA, built on the device.
2. Baselines: a plain batch-1 and batch-2 forward (t1, t2: ComfyUI's apply_model), the batch-1 forward captured in a
   CUDA graph (tg), the DragonDiffusion estimator forward + input-only gradient and a GoodDrag drag step; each with
   its FLOPs (torch.utils.flop_counter), achieved TFLOP/s, and host time (perf_counter without a sync) against GPU
   time (CUDA events): host >= GPU means the pass is CPU-bound.
3. Time by phase for one D+ move (50 steps) and one reduced GoodDrag edit: passes per phase, ms per pass, and ms per
   pass divided by t1 and by tg.
4. torch.cuda.set_sync_debug_mode("warn") over one short D+ edit and one short drag: syncs by stack frame.
5. Whole edits (median of --runs after one warm-up, with min-max spread): inversion + bank, D+ and D moves, GoodDrag
   and DragDiffusion at their presets' budgets (lr 1e-6, early stop off: every gradient step runs), the fast D+
   preset (25 steps); seconds, forward-equivalents (FLOPs / one batch-1 forward), seconds / (forward-equivalents x
   tg), achieved TFLOP/s and share of the GPU's dense fp16 peak, peak GiB (weights included). --sdxl adds an SDXL
   1024² move and GoodDrag edit (full-width SDXL UNet, random weights).
6. The same D+ move and GoodDrag with the MODEL compiled as ComfyUI's TorchCompileModel node compiles it (--compile,
   default its 'cudagraphs' backend): first edit (capture included) and median.
Prints a table and writes it to --out. Made to finish in about 8 minutes on one H100/H200.
"""
import argparse
import collections
import contextlib
import statistics
import sys
import time
import traceback
import warnings

import torch

from tests.support import comfy_inproc
from tests.support.comfy_inproc import run_node, run_passes
from tests.support.pack import load_pack

PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0}  # dense fp16/bf16
LINES = []


def say(line=""):
    print(line, flush=True)
    LINES.append(line)


def peak_tflops():
    if not torch.cuda.is_available():
        return float("nan")
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), float("nan"))


class Clock:
    """GPU time by CUDA events (the CPU's own clock off CUDA), and host time without a sync."""

    def __init__(self):
        self.cuda = torch.cuda.is_available()

    def __call__(self, fn):
        """(result, gpu seconds, host seconds) of fn()."""
        if self.cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            host = time.perf_counter()
            start.record()
            out = fn()
            end.record()
            host = time.perf_counter() - host
            torch.cuda.synchronize()
            return out, start.elapsed_time(end) / 1000, host
        host = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - host
        return out, seconds, seconds


def median_of(fn, runs):
    """(result, median gpu s, (min, max), median host s, peak GiB) over runs after one warm-up."""
    clock = Clock()
    fn()
    if clock.cuda:
        torch.cuda.reset_peak_memory_stats()
    times, hosts, out = [], [], None
    for _ in range(runs):
        out, gpu, host = clock(fn)
        times.append(gpu)
        hosts.append(host)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if clock.cuda else float("nan")
    return out, statistics.median(times), (min(times), max(times)), statistics.median(hosts), peak


def flops_of(fn):
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


# ------------------------------------------------------------------------------------------------- the models

def sd15(profile):
    from bench.support import load_model

    model, clip, _ = load_model(profile)
    return model, _conditioning(768)


def sdxl():
    """The full-width SDXL UNet (2.57B parameters) at random weights, as ComfyUI's SDXL config builds it."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SDXL({
        "model_channels": 320, "use_linear_in_transformer": True, "transformer_depth": [0, 0, 2, 2, 10, 10],
        "context_dim": 2048, "adm_in_channels": 2816, "use_temporal_attention": False, "in_channels": 4,
        "out_channels": 4, "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4], "transformer_depth_middle": 10,
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "num_head_channels": 64, "num_heads": -1,
        "use_spatial_transformer": True, "legacy": False, "num_classes": "sequential", "image_size": 32,
        "attention_resolutions": [], "context_dim_list": None})
    config.set_inference_dtype(torch.float16, None)
    device = comfy.model_management.get_torch_device()
    with torch.inference_mode():
        model = config.get_model({}, "", device=device)
        for p in model.diffusion_model.parameters():
            p.normal_(0, 0.02)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device,
                                               offload_device=comfy.model_management.unet_offload_device())
    generator = torch.Generator().manual_seed(0)
    cond = [[torch.randn(1, 77, 2048, generator=generator),
             {"pooled_output": torch.randn(1, 1280, generator=generator), "width": 1024, "height": 1024}]]
    uncond = [[torch.zeros(1, 77, 2048), {"pooled_output": torch.zeros(1, 1280), "width": 1024, "height": 1024}]]
    return patcher, (cond, uncond)


def _conditioning(dim):
    generator = torch.Generator().manual_seed(0)
    return [[torch.randn(1, 77, dim, generator=generator), {}]], [[torch.zeros(1, 77, dim), {}]]


# --------------------------------------------------------------------------------------------------- baselines

def baselines(model, conds, size, runs):
    """{name: (gpu s, host s, flops)} of the reference passes."""
    from comfyui_dragedit.kernels import features
    from comfyui_dragedit.kernels.plan import PlanStep
    from comfyui_dragedit.nodes import host

    cond, uncond = conds
    fam = host.family(model, "bench")
    device = model.load_device
    h = size // 8
    z = torch.randn(1, 4, h, h, device=device)
    step = PlanStep(25, 501, 481)
    tap = features.dragon_tap(fam.dragon_taps, fam.name)
    good = features.gooddrag_tap(fam.gooddrag_tap, fam.name)
    out = {}

    def measure(passes):
        base = passes.base
        sigma = passes.sigmas[501:502]
        context = passes.guider.conds["positive"][0]["model_conds"]
        extra = {k: v.cond for k, v in context.items() if hasattr(v, "cond") and k != "c_crossattn"}
        ctx = context["c_crossattn"].cond.to(device)
        extra = {k: v.to(device) for k, v in extra.items()}

        def forward(batch):
            return lambda: base.apply_model(z.expand(batch, -1, -1, -1), sigma.expand(batch),
                                            c_crossattn=ctx.expand(batch, -1, -1),
                                            **{k: v.expand(batch, *v.shape[1:]) for k, v in extra.items()})

        def estimator_grad():
            with torch.enable_grad():
                leaf = z.clone().requires_grad_(True)
                feats = passes.features(leaf, 501, tap)[1]
                return torch.autograd.grad(sum(f.float().square().mean() for f in feats), leaf)[0]

        def drag_step():
            with torch.enable_grad():
                leaf = z.clone().requires_grad_(True)
                eps, feats = passes.features(leaf, 501, good, need_eps=True)
                return torch.autograd.grad(feats[0].float().abs().mean() + eps.float().abs().mean(), leaf)[0]

        rows = {"plain forward, batch 1 (t1)": forward(1), "plain forward, batch 2 (t2)": forward(2),
                "CFG pass (guider, batch 2)": lambda: passes.eps(z, step, cfg=True),
                "estimator fwd + input grad": estimator_grad, "GoodDrag drag step (fwd + grad)": drag_step}
        for name, fn in rows.items():
            _, gpu, _, host_s, _ = median_of(fn, max(runs, 3))
            out[name] = (gpu, host_s, flops_of(fn))
        if torch.cuda.is_available():
            gpu, host_s = _graphed(forward(1), runs)
            out["plain forward in a CUDA graph (tg)"] = (gpu, host_s, out["plain forward, batch 1 (t1)"][2])

    with torch.inference_mode():
        run_passes(model, measure, cond, uncond, cfg=4.0, latent_hw=(h, h), grad=True)
    return out


def _graphed(fn, runs):
    """(gpu s, host s) of fn captured once in a CUDA graph and replayed."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    _, gpu, _, host_s, _ = median_of(graph.replay, max(runs, 5))
    return gpu, host_s


# -------------------------------------------------------------------------------------------------- the edits

def _nodes():
    from comfyui_dragedit.nodes import aldd, cross_attention, energy_guidance, features, guided_sampler, inversion

    return dict(inversion=inversion.DragEditDDIMInversion, vca=cross_attention.DragEditVisualCrossAttention,
                move=energy_guidance.DragEditEnergyGuidanceMove, features=features.DragEditFeatureExtractor,
                sampler=guided_sampler.DragEditGuidedSampler, aldd=aldd.DragEditAlDDScheduler)


def _latent(size):
    return {"samples": torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))}


def invert(nodes, model, cond, size, steps, strength=1.0, layers="family default"):
    return run_node(nodes["inversion"], model=model, latent=_latent(size), positive=cond, steps=steps,
                    strength=strength, layers=layers, bank_device="auto").result[0]


def move(nodes, model, conds, size, bank, schedule):
    cond, uncond = conds
    s = size // 64
    mask = torch.zeros(1, size, size)
    mask[:, 16 * s:40 * s, 8 * s:32 * s] = 1
    guidance = run_node(nodes["move"], mask=mask, offset_x=16 * s, offset_y=8 * s, w_edit=4.0, w_content=6.0,
                        w_contrast=0.2, w_inpaint=0.8, energy_scale=500.0, faithful_bugs=False,
                        keep_latent_mean=True).result[0]
    patched = run_node(nodes["vca"], model=model, memory_bank=bank, mode="replace", step_range="method's steps",
                       start_step=0, end_step=1000).result[0]
    tap = run_node(nodes["features"], model=model, preset="DragonDiffusion", blocks="", weights="",
                   resize="nearest", scale=0.25).result[0]
    return run_node(nodes["sampler"], model=patched, memory_bank=bank, guidance=guidance, features=tap,
                    positive=cond, negative=uncond, cfg=4.0, seed=42, schedule=schedule, sde_strength=0.4).result[0]


def drag(nodes, model, cond, size, preset, steps=50):
    from comfyui_dragedit.kernels.aldd import DRAGDIFFUSION, GOODDRAG
    from comfyui_dragedit.kernels.points import DragPoints

    method = {"gooddrag": GOODDRAG, "dragdiffusion": DRAGDIFFUSION}[preset]
    s = method.settings
    bank = invert(nodes, model, cond, size, steps, s.strength, "none")
    tap = run_node(nodes["features"], model=model, preset="GoodDrag / DragDiffusion", blocks="", weights="",
                   resize="nearest", scale=0.25).result[0]
    points = DragPoints(((size / 4, size / 4, size * 3 / 4, size * 3 / 4),), (size, size))
    return run_node(nodes["aldd"], model=model, memory_bank=bank, positive=cond, points=points, features=tap,
                    preset="custom", drag_steps=s.drag_steps, drags_per_step=s.drags_per_step,
                    grad_steps_per_drag=s.grad_steps_per_drag, lr=1e-6, max_no_change=0,
                    masactrl_layers="by resolution (family default)", keep_outside=True, motion=method.motion,
                    tracker=method.tracker).result[0]


class Phases:
    """Time by phase: the pack's pass methods and optimizer pieces, wrapped with CUDA events, inclusive."""

    def __init__(self):
        from comfyui_dragedit.kernels import aldd, guidance, tracker
        from comfyui_dragedit.nodes import host

        self.targets = [(host.Passes, "eps", "UNet eps passes (CFG and cond-only)"),
                        (host.Passes, "features", "estimator / drag forwards"),
                        (guidance, "correction", "guidance backward (batched VJP)"),
                        (aldd.AlDDPolicy, "_step", "drag loss + backward + Adam"),
                        (tracker, "track", "point tracking")]
        self.events = collections.defaultdict(list)

    @contextlib.contextmanager
    def __call__(self):
        saved = []
        for obj, name, label in self.targets:
            original = getattr(obj, name)
            saved.append((obj, name, original))
            setattr(obj, name, self._timed(original, label))
        try:
            yield self
        finally:
            for obj, name, original in saved:
                setattr(obj, name, original)

    def _timed(self, fn, label):
        def timed(*args, **kwargs):
            if torch.cuda.is_available():
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = fn(*args, **kwargs)
                end.record()
                self.events[label].append((start, end))
                return out
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.events[label].append(time.perf_counter() - start)
            return out
        return timed

    def report(self, t1, tg):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        for label, events in self.events.items():
            ms = [e[0].elapsed_time(e[1]) if isinstance(e, tuple) else e * 1000 for e in events]
            per = sum(ms) / len(ms)
            say(f"    {label:40}{len(ms):>6} passes {sum(ms):>9.0f} ms {per:>8.2f} ms/pass"
                f"{per / (t1 * 1000):>8.2f} x t1{per / (tg * 1000) if tg else float('nan'):>8.2f} x tg")


def syncs_by_frame(fn):
    """Host-device syncs of fn() by the innermost pack or ComfyUI stack frame (CUDA only)."""
    if not torch.cuda.is_available():
        return {}
    where = collections.Counter()
    original = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-1] if "site-packages/torch" not in f.filename]
        where[f"{frames[-1].filename.split('/')[-1]}:{frames[-1].lineno} {frames[-1].name}" if frames else "?"] += 1

    warnings.showwarning = record
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = original
    return dict(where.most_common(12))


def whole_edits(model, conds, size, runs, t1_flops, tg, label="SD-1.5") -> dict:
    """Times the whole edits; returns their FLOPs by row name (the compiled rows reuse them)."""
    nodes = _nodes()
    cond, _ = conds
    peak = peak_tflops()
    rows = [("inversion + bank, 50 steps", lambda: invert(nodes, model, cond, size, 50))]
    bank = invert(nodes, model, cond, size, 50)
    rows += [("DiffEditor move (D+), 50 steps, edit only", lambda: move(nodes, model, conds, size, bank, "D+")),
             ("DragonDiffusion move (D), 50 steps, edit only", lambda: move(nodes, model, conds, size, bank, "D"))]
    fast_bank = invert(nodes, model, cond, size, 25)
    rows += [("DiffEditor move (D+), fast: 25 steps, edit only",
              lambda: move(nodes, model, conds, size, fast_bank, "D+")),
             ("DiffEditor move (D+): inversion + edit", lambda: move(nodes, model, conds, size,
                                                                     invert(nodes, model, cond, size, 50), "D+")),
             ("GoodDrag (inversion + 7x10x3 drags + denoise)", lambda: drag(nodes, model, cond, size, "gooddrag")),
             ("DragDiffusion (inversion + 80 drags + denoise)",
              lambda: drag(nodes, model, cond, size, "dragdiffusion"))]
    say(f"  {label} {size}x{size}: {'edit':48}{'s (median)':>11}{'spread':>14}{'fwd-eq':>8}{'s/(eq x tg)':>12}"
        f"{'TFLOP/s':>9}{'of peak':>9}{'peak GiB':>10}")
    measured = {}
    for name, fn in rows:
        _, seconds, (lo, hi), _, gib = median_of(fn, runs)
        flops = measured[name] = flops_of(fn)
        equivalents = flops / t1_flops
        tflops = flops / seconds / 1e12
        say(f"  {name:60}{seconds:>11.2f}{f'{lo:.2f}-{hi:.2f}':>14}{equivalents:>8.0f}"
            f"{seconds / (equivalents * tg) if tg else float('nan'):>12.2f}{tflops:>9.1f}{tflops / peak:>9.1%}"
            f"{gib:>10.2f}")
    return measured


def compiled_edits(model, conds, size, runs, t1_flops, tg, backend, flops_by_edit):
    """The D+ move and GoodDrag with the MODEL compiled as ComfyUI's TorchCompileModel compiles it (`backend`), each
    pass type one graph (bench.compile_graphs counts them on the CPU): the first edit, tracing and capture
    included, then the median of `runs`. FLOPs are the uncompiled edit's, from whole_edits (the useful work;
    compiled estimate passes also run the blocks after the last tap)."""
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    nodes = _nodes()
    cond, _ = conds
    peak = peak_tflops()
    compiled = model.clone()
    set_torch_compile_wrapper(compiled, backend=backend)
    say(f"  compiled ({backend}), {size}x{size}: {'edit':31}{'first s':>9}{'s (median)':>11}{'spread':>14}"
        f"{'s/(eq x tg)':>12}{'TFLOP/s':>9}{'of peak':>9}{'peak GiB':>10}")
    try:
        bank, first_inversion, _ = Clock()(lambda: invert(nodes, compiled, cond, size, 50))
    except Exception as err:  # a backend that cannot capture these passes: say so and go on
        say(f"    inversion failed: {type(err).__name__}: {str(err)[:300]}")
        return
    rows = [("D+ move, 50 steps, edit only", "DiffEditor move (D+), 50 steps, edit only",
             lambda m, b: move(nodes, m, conds, size, b, "D+")),
            ("GoodDrag (inversion + drags + denoise)", "GoodDrag (inversion + 7x10x3 drags + denoise)",
             lambda m, b: drag(nodes, m, cond, size, "gooddrag"))]
    say(f"    {'inversion + bank, 50 steps':48}{first_inversion:>9.2f}")
    for name, eager_name, edit in rows:
        try:
            _, first, _ = Clock()(lambda: edit(compiled, bank))
            _, seconds, (lo, hi), _, gib = median_of(lambda: edit(compiled, bank), runs)
        except Exception as err:
            say(f"    {name}: failed: {type(err).__name__}: {str(err)[:300]}")
            continue
        flops = flops_by_edit[eager_name]
        equivalents = flops / t1_flops
        tflops = flops / seconds / 1e12
        say(f"    {name:48}{first:>9.2f}{seconds:>11.2f}{f'{lo:.2f}-{hi:.2f}':>14}"
            f"{seconds / (equivalents * tg) if tg else float('nan'):>12.2f}{tflops:>9.1f}{tflops / peak:>9.1%}"
            f"{gib:>10.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="SD-1.5 image side in px (multiple of 64)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per row (median, spread)")
    ap.add_argument("--profile", choices=("full", "test"), default="full",
                    help="'test': the CI model, to check the script on the CPU")
    ap.add_argument("--sdxl", action="store_true", help="also the SDXL 1024² rows (full-width UNet)")
    ap.add_argument("--out", default=None, help="also write the table to this file")
    ap.add_argument("--compile", default=None,
                    help="TorchCompileModel's backend for the compiled rows (default: cudagraphs on CUDA, eager on "
                         "the CPU; inductor compiles for minutes); 'none' skips them")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    comfy_inproc.import_comfy(cpu=not cuda)
    load_pack()
    say(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
        f"{torch.cuda.get_device_name() if cuda else 'CPU (no CUDA: no graphs, no peak memory)'}; dense fp16 peak "
        f"{peak_tflops():.0f} TFLOP/s")
    model, conds = sd15(args.profile)
    say(f"SD-1.5 UNet ({sum(p.numel() for p in model.model.diffusion_model.parameters()) / 1e6:.1f}M parameters, "
        f"{str(model.model.get_dtype()).removeprefix('torch.')}), random weights, {args.size}x{args.size} image")
    base = baselines(model, conds, args.size, args.runs)
    say(f"  {'baseline pass':44}{'GPU ms':>9}{'host ms':>9}{'GFLOP':>9}{'TFLOP/s':>9}")
    for name, (gpu, host_s, flops) in base.items():
        say(f"  {name:44}{gpu * 1000:>9.2f}{host_s * 1000:>9.2f}{flops / 1e9:>9.0f}{flops / gpu / 1e12:>9.1f}")
    t1, _, t1_flops = base["plain forward, batch 1 (t1)"]
    tg = base.get("plain forward in a CUDA graph (tg)", (None,))[0]
    nodes = _nodes()
    cond, _ = conds
    say("  time by phase, one D+ move (50 steps), then one GoodDrag edit at 10 steps (its 7x10x3 drags):")
    bank = invert(nodes, model, cond, args.size, 50)
    phases = Phases()
    with phases():
        move(nodes, model, conds, args.size, bank, "D+")
    phases.report(t1, tg)
    phases = Phases()
    with phases():
        drag(nodes, model, cond, args.size, "gooddrag", steps=10)
    phases.report(t1, tg)
    short = invert(nodes, model, cond, args.size, 10)
    say(f"  syncs, D+ move at 10 steps: {syncs_by_frame(lambda: move(nodes, model, conds, args.size, short, 'D+'))}")
    say(f"  syncs, GoodDrag at 10 steps: {syncs_by_frame(lambda: drag(nodes, model, cond, args.size, 'gooddrag', 10))}")
    flops_by_edit = whole_edits(model, conds, args.size, args.runs, t1_flops, tg)
    backend = args.compile or ("cudagraphs" if cuda else "eager")
    if backend != "none":
        compiled_edits(model, conds, args.size, args.runs, t1_flops, tg, backend, flops_by_edit)
    if args.sdxl:
        del model
        import comfy.model_management
        comfy.model_management.unload_all_models()
        xl, xl_conds = sdxl()
        xl_base = baselines(xl, xl_conds, 1024, 1)
        _, _, xl_flops = xl_base["plain forward, batch 1 (t1)"]
        whole_edits(xl, xl_conds, 1024, 1, xl_flops, xl_base.get("plain forward in a CUDA graph (tg)", (None,))[0],
                    "SDXL")
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(LINES) + "\n")


if __name__ == "__main__":
    sys.exit(main())
