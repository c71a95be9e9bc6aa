"""UI-format workflow JSON (what the frontend saves and users share) -> API-format prompt (what /prompt runs).

Mirrors the frontend's own graphToPrompt for the widgets our examples use: widget values are positional in
`widgets_values`, in the node's input order, with one extra value after a seed's control_after_generate and
after an image-upload combo. The browser test checks this against the real frontend's graphToPrompt.
"""
import json
import pathlib

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SKIPPED_NODE_TYPES = {"Note", "MarkdownNote"}
MUTED_OR_BYPASSED = {2, 4}


def _is_widget(spec):
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _extra_values(name, spec):
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if spec[0] == "INT" and options.get("control_after_generate", name in ("seed", "noise_seed")):
        return 1
    if options.get("image_upload"):
        return 1
    return 0


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
                    position += 1 + _extra_values(name, spec)
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def load(path):
    return json.loads(pathlib.Path(path).read_text())
