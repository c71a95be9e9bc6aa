"""Shared by the benchmarks: models at real SD-1.5 scale (random weights: cost does not depend on values),
and timing (passes are counted by tests.support.dispatch.PassCounter). Benchmarks print; they never assert timings."""
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


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def encode(clip, text):
    with torch.inference_mode():
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def parse_args(ap) -> "argparse.Namespace":
    """`ap`'s arguments with --threads added and applied. One torch thread by default, as tools/train_demo.py: on
    this shared 2-core CPU two jobs of two threads each ran many times slower than two of one."""
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def widget_defaults(node) -> dict:
    """A V3 node's widget defaults by input name, as a freshly added node has them."""
    info = node.GET_NODE_INFO_V1()["input"]
    specs = {**info["required"], **info.get("optional", {})}
    return {name: spec[1]["default"] for name, spec in specs.items() if len(spec) > 1 and "default" in spec[1]}
