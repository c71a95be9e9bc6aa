"""What torch.compile meets in the pack's passes (issue 12), counted on the CPU against a stock KSampler run of the
same compiled model in the same run: graphs compiled, compiled-graph calls against UNet passes, graph breaks,
recompiles and why, and the largest difference from the uncompiled edit.

    .dev/venv/bin/python -m bench.compile_graphs [--steps 10]

The model is compiled as ComfyUI's TorchCompileModel node compiles it (set_torch_compile_wrapper on the
diffusion_model), with tests.support.dispatch.CompileCounter as the backend (dynamo's graphs run as captured: no
code generation, so the counts hold for inductor and cudagraphs). A capture that fits the GPU well gives a few
graphs per edit, each called on many passes; a graph per step means a recompile (or, past dynamo's recompile
limit, an eager pass) per step. CI test model (SD-1.5 block layout, random weights) at a 64x64 image.
"""
import argparse
import collections
import logging
import re

import torch

from bench.cpu_counts import SIZE, _inputs, _nodes, dragon_edit, gooddrag_edit
from bench.support import encode, load_model
from tests.support.dispatch import CompileCounter, PassCounter


class RecompileReasons(logging.Handler):
    """Collects dynamo's recompile reasons (its 'recompiles' log), with numbers replaced by N to group them."""

    def __init__(self):
        super().__init__()
        self.kinds = collections.Counter()

    def emit(self, record):
        for line in record.getMessage().splitlines():
            line = line.strip()
            if line.startswith("- ") and re.match(r"- \d+/\d+: ", line):
                self.kinds[re.sub(r"\d+", "N", line.split(": ", 1)[1])[:110]] += 1

    def __enter__(self):
        torch._logging.set_logs(recompiles=True)
        self._logger = logging.getLogger("torch._dynamo.guards.__recompiles")
        self._logger.addHandler(self)
        self._logger.propagate, self._propagate = False, self._logger.propagate
        return self

    def __exit__(self, *exc):
        self._logger.removeHandler(self)
        self._logger.propagate = self._propagate
        torch._logging.set_logs()


def ksampler(model, cond, uncond, steps):
    """A stock KSampler (DDIM, CFG 4) of `steps` steps: the baseline."""
    import nodes as comfy_nodes

    latent = {"samples": torch.zeros(1, 4, SIZE // 8, SIZE // 8)}
    return comfy_nodes.common_ksampler(model, 0, steps, 4.0, "ddim", "ddim_uniform", cond, uncond, latent)[0]


def inversion(nodes, model, cond, steps):
    """DDIM inversion with a bank of the family's layers (the recording passes)."""
    from tests.support.comfy_inproc import run_node

    torch.manual_seed(0)
    latent = {"samples": torch.randn(1, 4, SIZE // 8, SIZE // 8) * 0.8}
    bank = run_node(nodes.inversion, **_inputs(nodes.inversion, model=model, latent=latent, positive=cond,
                                                steps=steps)).result[0]
    return {"samples": torch.stack([bank.latents[t] for t in bank.timesteps])}


def measure(label, edit, model):
    """Runs edit(model) plain and compiled; prints the counts."""
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    passes = PassCounter()
    plain = edit(passes.attach(model))["samples"]  # counted uncompiled: a counter in the graph would be guarded on
    compiled = model.clone()
    with CompileCounter() as backend, RecompileReasons() as reasons:
        set_torch_compile_wrapper(compiled, backend=backend)
        out = edit(compiled)["samples"]
    print(f"{label}")
    print(f"  UNet passes {passes.calls}; graphs compiled {backend.graphs}; compiled-graph calls {backend.calls}; "
          f"graph breaks {sum(backend.graph_breaks.values())}; frames left uncompiled "
          f"{sum(backend.uncompiled.values())}; max |compiled - plain| "
          f"{(out - plain).abs().max().item():.2e}")
    for kind, count in reasons.kinds.most_common(6):
        print(f"    {count:4} recompiles: {kind}")
    for kind, count in backend.graph_breaks.items():
        print(f"    {count:4} graph breaks: {kind.splitlines()[0][:110]}")
    for kind, count in backend.uncompiled.items():
        print(f"    {count:4} uncompiled frames: {kind[:110]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="DDIM steps of each run")
    args = ap.parse_args()
    model, clip, _ = load_model("test")
    cond, uncond = encode(clip, "a photo of a ball"), encode(clip, "")
    nodes = _nodes()
    print(f"torch {torch.__version__}, dynamo recompile limit {torch._dynamo.config.recompile_limit}; CI test model, "
          f"{SIZE}x{SIZE}, {args.steps} steps")
    measure("stock KSampler (baseline)", lambda m: ksampler(m, cond, uncond, args.steps), model)
    measure("DDIM inversion with a bank", lambda m: inversion(nodes, m, cond, args.steps), model)
    measure("DiffEditor move (D+), defaults", lambda m: dragon_edit(nodes, m, cond, uncond, args.steps), model)
    measure("GoodDrag (small drag budget)", lambda m: gooddrag_edit(nodes, m, cond, args.steps, "small"), model)


if __name__ == "__main__":
    main()
