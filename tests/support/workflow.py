"""UI-format workflow JSON (what the frontend saves and users share) -> API-format prompt (what /prompt runs).

Mirrors the frontend's own graphToPrompt for the widgets our examples use: widget values are positional in
`widgets_values`, in the node's input order, with one extra value right after a seed (its control_after_generate)
and one after the required inputs of a node with an image-upload combo (the upload button the frontend appends
there: Load Image (as Mask) saves image, channel, upload). For scripts that run examples without a browser
(scripts/demo.py); tests/browser/test_examples.py checks it equals graphToPrompt for every example.
"""
import json
import pathlib

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SKIPPED_NODE_TYPES = {"Note", "MarkdownNote"}
MUTED_OR_BYPASSED = {2, 4}


def _is_widget(spec):
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _options(spec):
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def _control_value(name, spec):
    return spec[0] == "INT" and _options(spec).get("control_after_generate", name in ("seed", "noise_seed"))


def ui_to_api(workflow, object_info):
    """Convert a UI workflow dict to an API prompt dict, using the server's /object_info for input order."""
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in SKIPPED_NODE_TYPES or node.get("mode", 0) in MUTED_OR_BYPASSED:
            continue
        if node["type"] not in object_info:
            raise KeyError(f"workflow node {node['id']} has unknown type {node['type']!r}")
        info = object_info[node["type"]]
        order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        values = list(node.get("widgets_values") or [])
        inputs = {}
        position = 0
        for section in ("required", "optional"):
            for name in order.get(section, []):
                spec = specs[name]
                if _is_widget(spec) and position < len(values):
                    inputs[name] = values[position]
                    position += 1 + _control_value(name, spec)
            if section == "required" and any(_options(specs[n]).get("image_upload") for n in order.get(section, [])):
                position += 1
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def load(path):
    return json.loads(pathlib.Path(path).read_text())
