"""Write example_workflows/*.json (UI format, as the frontend saves them) from compact graph descriptions.

Widget values are laid out by the live server's /object_info, so a workflow always matches the nodes'
current inputs. Run after changing a node's inputs or a workflow below:

    .dev/venv/bin/python -m scripts.build_example_workflows
"""
import json
import sys

from tests.support.pack import REPO
from tests.support.server import ComfyServer
from tests.support.workflow import _extra_values, _is_widget

OUT = REPO / "example_workflows"
TEST_CKPT = "dragedit_test_sd15.safetensors"
SCENE = "dragedit_scene.png"
COLUMN_WIDTH, ROW_GAP = 380, 40


def node(key, class_type, **inputs):
    """One node: literal inputs are widget values, ("key", slot) tuples are links."""
    return key, class_type, inputs


def _loader_and_image(image=SCENE, prompt="a photo of objects on a table"):
    return [
        node("ckpt", "CheckpointLoaderSimple", ckpt_name=TEST_CKPT),
        node("image", "LoadImage", image=image),
        node("pos", "CLIPTextEncode", clip=("ckpt", 1), text=prompt),
        node("latent", "VAEEncode", pixels=("image", 0), vae=("ckpt", 2)),
    ]


def reconstruct():
    """Shared core: invert with a memory bank, then a stock KSampler on the bank-attention MODEL reconstructs."""
    return _loader_and_image() + [
        node("neg", "CLIPTextEncode", clip=("ckpt", 1), text=""),
        node("invert", "DragEditDDIMInversion", model=("ckpt", 0), latent=("latent", 0), positive=("pos", 0)),
        node("vca", "DragEditVisualCrossAttention", model=("ckpt", 0), memory_bank=("invert", 0)),
        node("sampler", "KSamplerAdvanced", model=("vca", 0), add_noise="disable", noise_seed=0, steps=50, cfg=1.0,
             sampler_name="ddim", scheduler="ddim_uniform", positive=("pos", 0), negative=("neg", 0),
             latent_image=("invert", 1), start_at_step=0, end_at_step=10000, return_with_leftover_noise="disable"),
        node("decode", "VAEDecode", samples=("sampler", 0), vae=("ckpt", 2)),
        node("save", "SaveImage", images=("decode", 0), filename_prefix="dragedit_reconstruct"),
    ]


WORKFLOWS = {"reconstruct": reconstruct}


def _depths(spec):
    depth = {}
    for key, _, inputs in spec:
        parents = [v[0] for v in inputs.values() if isinstance(v, tuple)]
        depth[key] = 1 + max((depth[p] for p in parents), default=-1)
    return depth


def build(spec, object_info):
    """UI-format workflow dict for a list of `node(...)` entries (parents before children)."""
    ids = {key: n + 1 for n, (key, _, _) in enumerate(spec)}
    depth = _depths(spec)
    rows = {}
    nodes, links = [], []
    outputs = {}
    for key, class_type, inputs in spec:
        info = object_info[class_type]
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = info["input_order"]
        widgets, slots = [], []
        for name in order.get("required", []) + order.get("optional", []):
            spec_ = specs[name]
            value = inputs.get(name)
            if isinstance(value, tuple):
                link_id = len(links) + 1
                parent = ids[value[0]]
                out_type = object_info[spec[ids[value[0]] - 1][1]]["output"][value[1]]
                links.append([link_id, parent, value[1], ids[key], len(slots), out_type])
                outputs.setdefault((parent, value[1]), []).append(link_id)
                slots.append({"name": name, "type": spec_[0] if isinstance(spec_[0], str) else "COMBO",
                              "link": link_id})
            elif _is_widget(spec_):
                default = spec_[1].get("default") if len(spec_) > 1 and isinstance(spec_[1], dict) else None
                if value is None:
                    value = default if default is not None else (spec_[0][0] if isinstance(spec_[0], list) else None)
                widgets.append(value)
                if _extra_values(name, spec_):
                    widgets.append("fixed" if spec_[0] == "INT" else "image")
            elif name in info["input"].get("required", {}):
                raise ValueError(f"{key}: required input {name} of {class_type} is not connected")
        unknown = set(inputs) - set(specs)
        if unknown:
            raise ValueError(f"{key}: {class_type} has no inputs {sorted(unknown)}")
        column = depth[key]
        row_y = rows.get(column, 60)
        height = 80 + 26 * (len(widgets) + len(slots))
        rows[column] = row_y + height + ROW_GAP
        nodes.append({"id": ids[key], "type": class_type, "pos": [40 + COLUMN_WIDTH * column, row_y],
                      "size": [COLUMN_WIDTH - 40, height], "flags": {}, "order": len(nodes), "mode": 0,
                      "inputs": slots, "outputs": [], "properties": {"Node name for S&R": class_type},
                      "widgets_values": widgets})
    for n in nodes:
        info = object_info[n["type"]]
        n["outputs"] = [{"name": name, "type": kind, "links": outputs.get((n["id"], slot), []), "slot_index": slot}
                        for slot, (name, kind) in enumerate(zip(info["output_name"], info["output"]))]
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def main(names):
    with ComfyServer() as server:
        object_info = server.object_info()
    for name in names or WORKFLOWS:
        path = OUT / f"{name}.json"
        path.write_text(json.dumps(build(WORKFLOWS[name](), object_info), indent=1) + "\n")
        print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main(sys.argv[1:])
