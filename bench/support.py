"""Shared by the benchmarks: models at real SD-1.5 scale (random weights: cost does not depend on values),
UNet pass counting through a patch, and timing. Benchmarks print; they never assert timings."""
import time

import torch

from tests.support import comfy_inproc
from tests.support.pack import load_pack
from tests.support.tiny_sd15 import build_state_dict


def load_model(profile="full"):
    """(MODEL, CLIP, VAE) built in-process: 'full' is SD-1.5's 859.5M UNet, 'test' the CI model."""
    load_pack()
    comfy_inproc.import_comfy()
    import comfy.sd

    with torch.inference_mode():
        sd = build_state_dict(profile, dtype=torch.float16)
        model, clip, vae = comfy.sd.load_state_dict_guess_config(sd)[:3]
    return model, clip, vae


class PassCounter:
    """Counts UNet forward passes (and those recording a graph, i.e. followed by a backward) via an input block patch."""

    def __init__(self):
        self.calls = 0        # UNet forwards (a CFG batch of 2 is one call)
        self.items = 0        # batch items through the UNet
        self.with_grad = 0    # forwards recording a graph (each followed by one backward)

    def __deepcopy__(self, memo):
        return self

    def __call__(self, h, transformer_options):
        if transformer_options.get("block") == ("input", 0):
            self.calls += 1
            self.items += h.shape[0]
            self.with_grad += int(h.requires_grad)
        return h

    def attach(self, model):
        counted = model.clone()
        counted.set_model_input_block_patch(self)
        return counted


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def encode(clip, text):
    with torch.inference_mode():
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def widget_defaults(node) -> dict:
    """A V3 node's widget defaults by input name, as a freshly added node has them."""
    info = node.GET_NODE_INFO_V1()["input"]
    specs = {**info["required"], **info.get("optional", {})}
    return {name: spec[1]["default"] for name, spec in specs.items() if len(spec) > 1 and "default" in spec[1]}
