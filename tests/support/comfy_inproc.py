"""ComfyUI imported in-process (no server), the way main.py sets it up, for the host test layer."""
import sys

import torch

from tests.support.host import COMFY_ROOT, TEST_CKPT, require_host

_state = {}


def import_comfy(cpu=True):
    """Import ComfyUI once: the device chosen before comfy.model_management probes CUDA; utils before nodes
    (gotcha 4). Tests run on the CPU; a benchmark on a GPU machine passes cpu=False."""
    if "nodes" in _state:
        return _state["nodes"]
    require_host()
    sys.path.insert(0, str(COMFY_ROOT))
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    comfy.cli_args.args.use_pytorch_cross_attention = True
    import utils.extra_config  # noqa: F401  (before `nodes`, which puts ROOT/comfy first on sys.path)
    import nodes

    _state["nodes"] = nodes
    return nodes


def load_test_checkpoint():
    """(MODEL, CLIP, VAE) of the random-weight SD-1.5-topology checkpoint, loaded as CheckpointLoaderSimple does."""
    if "ckpt" not in _state:
        import_comfy()
        import comfy.sd

        with torch.inference_mode():
            model, clip, vae = comfy.sd.load_checkpoint_guess_config(str(TEST_CKPT))[:3]
        _state["ckpt"] = (model, clip, vae)
    return _state["ckpt"]


def run_node(node_cls, unique_id="1", **inputs):
    """Execute a V3 node as the executor does: a class clone with hidden inputs, under inference_mode."""
    from comfy_api.latest import io

    clone = node_cls.PREPARE_CLASS_CLONE({io.Hidden.unique_id: unique_id})
    with torch.inference_mode():
        out = clone.execute(**inputs)
    return out


def run_passes(model, fn, positive, negative=None, cfg=1.0, latent_hw=(8, 8), attn1=(), grad=False):
    """fn(passes) inside one host.sample run on `model` (as a node would, under inference_mode); returns its value."""
    from comfyui_dragedit.nodes import host

    result = {}

    def loop(passes, z0):
        result["value"] = fn(passes)
        return z0

    with torch.inference_mode():
        host.sample(model, loop, torch.zeros(1, 4, *latent_hw), positive, negative, cfg=cfg, attn1=attn1, grad=grad)
    return result["value"]
