"""Bad inputs through a real server (issue 11): what a user sees for every numeric input of every DragEdit node at
NaN, +inf, -inf, below its minimum and above its maximum (typed in, and linked from another node), for malformed
strings (hypothesis), for optional inputs left unconnected, and for the cases an outside review listed.

Every case states its one expected outcome and is checked on all the user sees: the answer of POST /prompt (status
and node_errors: ComfyUI runs the valid outputs of a prompt and answers 200 when only some fail validation), the
websocket's execution_error (the dialog) and the history (status, its messages, the saved outputs):
  Rejected  at queue time: node_errors name the node and the input, with one error;
  Failed    at run time: one execution_error, from the node, reading "DragEdit <node>: input '<input>' ..." (no
            traceback from inside torch, no "NoneType", the message once), and the history says error;
  Runs      success, and every saved latent is finite and every saved image not flat (a NaN latent decodes flat).
The prompts are built from /object_info (every widget at its default, then a few set for a cheap run: the demo
model, 64x64 images, 4 DDIM steps), so a new node or input without cases fails `test_every_input_has_cases`.
"""
import asyncio
import concurrent.futures
import copy
import dataclasses
import json
import math
import re
import subprocess
import uuid

import aiohttp
import numpy as np
import pytest
import safetensors.torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.support.host import COMFY_ROOT, PYTHON
from tests.support.pack import REPO
from tests.support.server import PACK_DIR_NAME

SIDE = 64                      # image side, px: latent 8x8
STEPS = 4                      # DDIM steps of every inversion
INPAINTING_UNET = "dragedit_test_sd15_inpainting.safetensors"   # tests/support/model_variants.py
UNCLIP_UNET = "dragedit_test_sd21_unclip_l.safetensors"
# The image-prompt pair needs DiffEditor's ip_sd15_64.bin on an SD-1.5-wide UNet and a ViT-H/14 CLIP vision file
# (632M parameters): no test server holds those. Their bad inputs (missing, foreign or pickled keys, no CLIP vision,
# a CLIP vision of the wrong width) are cases in tests/host/test_image_prompt.py on the real widths.
NEEDS_FILES = {"DragEditImagePromptLoader", "DragEditImagePrompt"}
EXAMPLES = 40                  # hypothesis examples per string test


# ---------------------------------------------------------------------------------------------- expected outcomes

@dataclasses.dataclass(frozen=True)
class Rejected:
    """Refused at POST /prompt: node_errors[node] holds one error, for `input`; only that node has errors."""
    node: str
    input: str
    text: str = None           # custom validation: its details must contain this (our message)


@dataclasses.dataclass(frozen=True)
class Failed:
    """One execution_error, raised by `node` about its input `input` (its label on the node), or, when `at` is
    given, ComfyUI's block of the consumer `at` carrying that message (history then says success: the partial run)."""
    node: str
    input: str
    at: str = None
    avoid: tuple = ()          # words the message must not use (a fix meant for another input)


@dataclasses.dataclass(frozen=True)
class Runs:
    """Success with every output saved: latents finite, images not flat."""


@dataclasses.dataclass
class Seen:
    status: int
    answer: dict
    ws_errors: list            # execution_error payloads from the websocket
    entry: dict                # the history entry (None when refused)


class Host:
    """The shared server with what the cases need: /object_info, the variant UNets, and observe(prompt)."""

    def __init__(self, server, tried: dict):
        self.server, self.tried = server, tried   # tried: kind -> cases run, printed by tests/e2e/conftest.py
        self.object_info = server.object_info()
        self.client_id = f"bad-inputs-{uuid.uuid4().hex[:8]}"
        self.ours = {name: info for name, info in self.object_info.items()
                     if info.get("python_module", "").endswith(PACK_DIR_NAME) and name not in NEEDS_FILES}

    def title(self, class_type):
        return self.object_info[class_type]["display_name"]

    def spec(self, class_type, name):
        inputs = self.object_info[class_type]["input"]
        return {**inputs.get("required", {}), **inputs.get("optional", {})}[name]

    def label(self, class_type, name):
        """The input's name as the node shows it."""
        spec = self.spec(class_type, name)
        return (spec[1] if len(spec) > 1 else {}).get("display_name", name)

    def defaults(self, class_type):
        """Every widget of the node at its default."""
        inputs = self.object_info[class_type]["input"]
        values = {}
        for name, spec in {**inputs.get("required", {}), **inputs.get("optional", {})}.items():
            options = spec[1] if len(spec) > 1 else {}
            if "default" in options:
                values[name] = options["default"]
            elif spec[0] == "COMBO" and options.get("options"):
                values[name] = options["options"][0]
            elif isinstance(spec[0], list) and spec[0]:
                values[name] = spec[0][0]
        return values

    def is_output(self, class_type):
        return bool(self.object_info[class_type].get("output_node"))

    def observe(self, prompt, timeout=300) -> Seen:
        # In a thread of its own: in a whole-suite run the browser layer's playwright (sync API) keeps an event
        # loop running in this one, where asyncio.run refuses to start another.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self._observe(prompt, timeout)).result()

    async def _observe(self, prompt, timeout):
        ws_url = self.server.url.replace("http://", "ws://") + f"/ws?clientId={self.client_id}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.ws_connect(ws_url) as ws:
                body = json.dumps({"prompt": prompt, "client_id": self.client_id})   # NaN and Infinity as JS would
                async with session.post(self.server.url + "/prompt", data=body,
                                        headers={"Content-Type": "application/json"}) as resp:
                    status, answer = resp.status, await resp.json(content_type=None)
                if status != 200:
                    return Seen(status, answer, [], None)
                prompt_id, errors = answer["prompt_id"], []
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    event = json.loads(msg.data)
                    data = event.get("data", {})
                    if data.get("prompt_id") != prompt_id:
                        continue
                    if event["type"] == "execution_error":
                        errors.append(data)
                    if event["type"] == "executing" and data.get("node") is None:
                        break
        entry = self.server.get(f"/history/{prompt_id}")[prompt_id]
        return Seen(status, answer, errors, entry)


@pytest.fixture(scope="module")
def host(comfy_server, bad_input_cases_tried):
    out_dir = comfy_server.base_dir / "models" / "diffusion_models"
    subprocess.run([str(PYTHON), "-m", "tests.support.model_variants", "--comfy-root", str(COMFY_ROOT),
                    "--out-dir", str(out_dir)], cwd=REPO, check=True, capture_output=True)
    return Host(comfy_server, bad_input_cases_tried)


# ---------------------------------------------------------------------------------------------- checking a case

def _ancestors(prompt, node_id, seen=None):
    seen = set() if seen is None else seen
    if node_id not in seen:
        seen.add(node_id)
        for value in prompt[node_id]["inputs"].values():
            if isinstance(value, list) and len(value) == 2 and value[0] in prompt:
                _ancestors(prompt, value[0], seen)
    return seen


def _message_problems(message, prefix, avoid=()):
    problems = [f"message says {word!r}: {message[:400]!r}" for word in avoid if word in message]
    if not message.startswith(prefix):
        problems.append(f"message does not start with {prefix!r}: {message[:400]!r}")
    if message.count(prefix) != 1:
        problems.append(f"message repeats itself: {message[:400]!r}")
    for word in ("NoneType", "Traceback", "tensor(", "modes"):
        if word in message:
            problems.append(f"message says {word!r}: {message[:400]!r}")
    return problems


def _outputs_problems(host, prompt, entry, expected_missing=()):
    """Every sink of the prompt saved its output (latents finite, images not flat), except `expected_missing`."""
    problems = []
    outputs = entry.get("outputs", {})
    for node_id, node in prompt.items():
        if node["class_type"] not in ("SaveImage", "SaveLatent"):
            continue
        if node_id in expected_missing:
            if node_id in outputs:
                problems.append(f"{node_id} saved an output although its input was refused")
            continue
        if node_id not in outputs:
            problems.append(f"{node_id} saved nothing")
            continue
        for item in outputs[node_id].get("images", []) + outputs[node_id].get("latents", []):
            path = host.server.base_dir / item["type"] / item.get("subfolder", "") / item["filename"]
            if path.suffix == ".latent":
                latent = safetensors.torch.load_file(str(path))["latent_tensor"]
                if not bool(latent.isfinite().all()):
                    problems.append(f"{node_id} saved a latent with NaN or inf")
            else:
                with Image.open(path) as im:
                    pixels = np.asarray(im.convert("RGB"))
                if pixels.min() == pixels.max():
                    problems.append(f"{node_id} saved a flat image (a NaN latent decodes flat)")
    return problems


def check(host, prompt, expected, seen: Seen) -> list:
    """What the user saw against the one expected outcome; the problems found (empty: as expected)."""
    node_errors = seen.answer.get("node_errors", {}) if isinstance(seen.answer, dict) else {}
    history_errors = [m[1] for m in (seen.entry or {}).get("status", {}).get("messages", [])
                      if m[0] == "execution_error"]
    status_str = (seen.entry or {}).get("status", {}).get("status_str")
    if isinstance(expected, Rejected):
        problems = []
        outputs = [k for k, v in prompt.items() if host.is_output(v["class_type"])]
        refused = [o for o in outputs if expected.node in _ancestors(prompt, o)]
        if set(node_errors) != {expected.node}:
            problems.append(f"node_errors name {sorted(node_errors)}, expected [{expected.node!r}]: "
                            f"{json.dumps(node_errors)[:600]}")
        else:
            errors = node_errors[expected.node]["errors"]
            names = [e.get("extra_info", {}).get("input_name") for e in errors]
            if names != [expected.input]:
                problems.append(f"node_errors[{expected.node!r}] are for {names}, expected one for "
                                f"{expected.input!r}: {json.dumps(errors)[:600]}")
            elif expected.text is not None:
                problems += _message_problems(errors[0]["details"].split(" - ", 1)[-1], expected.text)
        if len(refused) == len(outputs):
            if seen.status != 400:
                problems.append(f"HTTP {seen.status}, expected 400 (every output depends on {expected.node})")
        elif seen.status != 200 or status_str != "success":
            problems.append(f"HTTP {seen.status}, history {status_str}: expected the partial run of the outputs "
                            f"that do not depend on {expected.node}")
        else:
            problems += _outputs_problems(host, prompt, seen.entry, expected_missing=refused)
        return problems
    if seen.status != 200:
        return [f"HTTP {seen.status}: {json.dumps(seen.answer)[:800]}"]
    if node_errors:
        return [f"node_errors in a 200 answer (a partial run): {json.dumps(node_errors)[:800]}"]
    if isinstance(expected, Runs):
        if seen.ws_errors or status_str != "success":
            return [f"history {status_str}, errors {json.dumps(seen.ws_errors)[:800]}"]
        return _outputs_problems(host, prompt, seen.entry)
    class_type = prompt[expected.node]["class_type"]
    prefix = f"DragEdit {host.title(class_type)}: input '{host.label(class_type, expected.input)}'"
    if len(seen.ws_errors) != 1:
        return [f"{len(seen.ws_errors)} execution errors, expected one: {json.dumps(seen.ws_errors)[:800]}"]
    error = seen.ws_errors[0]
    if expected.at is None:
        problems = [] if status_str == "error" and history_errors == [error] else \
            [f"history {status_str} with {len(history_errors)} errors, expected the websocket's error"]
        if error["node_id"] != expected.node:
            problems.append(f"the error comes from node {error['node_id']!r}, expected {expected.node!r}")
        if not error["exception_type"].endswith(".DragEditInputError"):
            problems.append(f"exception type {error['exception_type']}")
        torch_frames = [line for line in error.get("traceback", []) if "/torch/" in line]
        if torch_frames:
            problems.append(f"traceback from inside torch: {torch_frames[-1][:300]}")
        return problems + _message_problems(error["exception_message"], prefix, expected.avoid)
    problems = [] if status_str == "success" and not history_errors else [f"history {status_str}"]
    if error["node_id"] != expected.at or error["exception_type"] != "ExecutionBlocked":
        problems.append(f"{error['exception_type']} at {error['node_id']!r}, expected ComfyUI's block at "
                        f"{expected.at!r}")
    blocked = {o for o in prompt if expected.at in _ancestors(prompt, o)}
    problems += _outputs_problems(host, prompt, seen.entry, expected_missing=blocked)
    return problems + _message_problems(error["exception_message"].removeprefix("Execution Blocked: "), prefix,
                                        expected.avoid)


def run_case(host, kind, name, prompt, expected) -> list:
    """Run one case; its problems, each prefixed with the case's name."""
    host.tried[kind] = host.tried.get(kind, 0) + 1
    seen = host.observe(prompt)
    return [f"{name}: {p}" for p in check(host, prompt, expected, seen)]


def run_cases(host, kind, cases):
    failures = []
    for name, prompt, expected in cases:
        failures += run_case(host, kind, name, prompt, expected)
    assert not failures, f"{len(failures)} of {len(cases)} {kind} cases failed:\n" + "\n".join(failures)


# ---------------------------------------------------------------------------------------------- the prompts

def link(node_id, slot=0):
    return [node_id, slot]


class Prompt(dict):
    """An API-format prompt under construction: add(id, class, **inputs) starts from the node's defaults."""

    def __init__(self, host):
        super().__init__()
        self.host = host

    def add(self, node_id, class_type, **inputs):
        defaults = self.host.defaults(class_type) if class_type in self.host.object_info else {}
        self[node_id] = {"class_type": class_type, "inputs": {**defaults, **inputs}}
        return self

    def __deepcopy__(self, memo):
        return {k: copy.deepcopy(v, memo) for k, v in self.items()}


def points_json(*pairs, size=(SIDE, SIDE)):
    return json.dumps({"version": 1, "image_size": list(size), "pairs": [list(p) for p in pairs]})


def _image(p, suffix, file):
    p.add(f"load{suffix}", "LoadImage", image=file)
    p.add(f"resolution{suffix}", "DragEditWorkingResolution", image=link(f"load{suffix}"), resolution=SIDE)
    p.add(f"latent{suffix}", "VAEEncode", pixels=link(f"resolution{suffix}"), vae=link("model", 2))


def _square(p, node_id, x, y, size=16):
    p.add(f"{node_id}_canvas", "SolidMask", value=0.0, width=SIDE, height=SIDE)
    p.add(f"{node_id}_square", "SolidMask", value=1.0, width=size, height=size)
    p.add(node_id, "MaskComposite", destination=link(f"{node_id}_canvas"), source=link(f"{node_id}_square"), x=x,
          y=y, operation="add")


def _common(host):
    p = Prompt(host)
    p.add("model", "DragEditDemoModel")
    p.add("text", "CLIPTextEncode", clip=link("model", 1), text="")
    _image(p, "", "dragedit_demo_scene.png")
    return p


def _inversion(p, node_id="inversion", latent="latent", **inputs):
    p.add(node_id, "DragEditDDIMInversion", **{"model": link("model"), "latent": link(latent),
                                               "positive": link("text"), "steps": STEPS, **inputs})


def _sinks(p, samples):
    p.add("decode", "VAEDecode", samples=samples, vae=link("model", 2))
    p.add("save", "SaveImage", images=link("decode"), filename_prefix="bad_inputs/image")
    p.add("save_latent", "SaveLatent", samples=samples, filename_prefix="bad_inputs/latent")


def dragon(host, mode):
    """Inversion -> Visual Cross-Attention -> Energy Guidance (mode) -> Guided Sampler -> decode, save."""
    p = _common(host)
    _inversion(p)
    p.add("features", "DragEditFeatureExtractor", model=link("model"), memory_bank=link("inversion"),
          positive=link("text"), preview_step=1)
    _square(p, "mask", 40, 48)
    two_images = mode in ("appearance", "paste")
    if two_images:
        _image(p, "_b", "dragedit_scene_b.png")
        _inversion(p, "inversion_b", "latent_b")
        _square(p, "mask_b", 8, 8)
    if mode == "move":
        p.add("guidance", "DragEditEnergyGuidanceMove", mask=link("mask"), offset_x=-16, offset_y=-8)
    elif mode == "resize":
        p.add("guidance", "DragEditEnergyGuidanceResize", mask=link("mask"), scale=1.5)
    elif mode == "appearance":
        p.add("guidance", "DragEditEnergyGuidanceAppearance", mask_base=link("mask"), mask_replace=link("mask_b"))
    elif mode == "paste":
        p.add("guidance", "DragEditEnergyGuidancePaste", mask=link("mask_b"), offset_x=16, offset_y=16)
    else:
        p.add("points", "DragEditPoints", image=link("resolution"), points_json=points_json((48, 56, 32, 48)),
              mask=link("mask"))
        p.add("guidance", "DragEditEnergyGuidanceDrag", points=link("points"), mask=link("points", 4))
    attention = {"move": "replace", "resize": "replace", "drag": "concat"}.get(mode, "masked")
    p.add("attention", "DragEditVisualCrossAttention", model=link("model"), memory_bank=link("inversion"),
          mode=attention)
    sampler = dict(model=link("attention"), memory_bank=link("inversion"), guidance=link("guidance"),
                   features=link("features"), positive=link("text"), negative=link("text"))
    if two_images:
        masks = ("mask", "mask_b") if mode == "appearance" else (link("guidance", 1), link("guidance", 2))
        p["attention"]["inputs"].update(memory_bank_replace=link("inversion_b"),
                                        mask_base=link(masks[0]) if isinstance(masks[0], str) else masks[0],
                                        mask_replace=link(masks[1]) if isinstance(masks[1], str) else masks[1])
        sampler["memory_bank_replace"] = link("inversion_b")
    p.add("sampler", "DragEditGuidedSampler", **sampler)
    _sinks(p, link("sampler"))
    return p


def gooddrag(host):
    """Identity LoRA (one step) -> Inversion (strength 0.75) -> AlDD Drag Scheduler (one drag) with Motion
    Supervision and Point Tracker."""
    p = _common(host)
    p.add("lora", "DragEditIdentityLoRA", model=link("model"), latent=link("latent"), positive=link("text"), steps=1)
    _inversion(p, strength=0.75, layers="none", model=link("lora"))
    _square(p, "mask", 40, 48)
    p.add("features", "DragEditFeatureExtractor", model=link("lora"), preset="GoodDrag / DragDiffusion")
    p.add("points", "DragEditPoints", image=link("resolution"), points_json=points_json((48, 56, 40, 48)),
          mask=link("mask"))
    p.add("motion", "DragEditMotionSupervision")
    p.add("tracker", "DragEditPointTracker", image=link("resolution"), points=link("points"))
    p.add("scheduler", "DragEditAlDDScheduler", model=link("lora"), memory_bank=link("inversion"),
          positive=link("text"), points=link("points"), features=link("features"), preset="custom", drag_steps=1,
          drags_per_step=1, grad_steps_per_drag=1, motion=link("motion"), tracker=link("tracker"),
          mask=link("points", 4), image=link("resolution"))
    _sinks(p, link("scheduler"))
    return p


def drag_points(host, text):
    """Drag Points alone, its preview saved."""
    p = Prompt(host)
    p.add("load", "LoadImage", image="dragedit_demo_scene.png")
    p.add("resolution", "DragEditWorkingResolution", image=link("load"), resolution=SIDE)
    p.add("points", "DragEditPoints", image=link("resolution"), points_json=text)
    p.add("save", "SaveImage", images=link("points", 5), filename_prefix="bad_inputs/points")
    return p


def custom_features(host, **widgets):
    """Feature Extractor (custom) with its preview of the inverted image, saved."""
    p = _common(host)
    _inversion(p)
    p.add("features", "DragEditFeatureExtractor", **{"model": link("model"), "memory_bank": link("inversion"),
                                                     "positive": link("text"), "preset": "custom", "preview_step": 1,
                                                     **widgets})
    p.add("save", "SaveImage", images=link("features", 1), filename_prefix="bad_inputs/features")
    return p


def model_check(host, unet):
    """A UNet from models/diffusion_models into DDIM Inversion."""
    p = _common(host)
    p.add("unet", "UNETLoader", unet_name=unet)
    _inversion(p, model=link("unet"))
    _sinks(p, link("inversion", 1))
    return p


def pipelines(host):
    """The base prompts, in the order their nodes' cases are taken from (a node's cases run in the first that
    holds it)."""
    return {"move": dragon(host, "move"), "resize": dragon(host, "resize"),
            "appearance": dragon(host, "appearance"), "paste": dragon(host, "paste"), "drag": dragon(host, "drag"),
            "gooddrag": gooddrag(host)}


# ---------------------------------------------------------------------------------------------- numeric cases

PRIMITIVE = {"INT": "PrimitiveInt", "FLOAT": "PrimitiveFloat"}


def numeric_values(kind, options):
    """(label, value) of the bad values of one input: NaN and the infinities, one step past each bound."""
    step = options.get("step") or 1
    values = [("nan", math.nan), ("+inf", math.inf), ("-inf", -math.inf)]
    if options.get("min") is not None:
        values.append(("below min", options["min"] - step))
    if options.get("max") is not None:
        values.append(("above max", options["max"] + step))
    return [(label, int(v) if kind == "INT" and math.isfinite(v) else v) for label, v in values]


def expected_numeric(kind, options, value, linked, node_id, name):
    """ComfyUI refuses typed-in values outside the declared range (and an INT it cannot convert) at queue time;
    it lets a typed-in NaN FLOAT and every linked value through, which the node refuses when it runs."""
    if linked:
        return Failed(node_id, name)
    if kind == "INT" and not math.isfinite(value):
        return Rejected(node_id, name)
    if math.isnan(value):
        return Failed(node_id, name)
    low, high = options.get("min", -math.inf), options.get("max", math.inf)
    return Rejected(node_id, name) if not low <= value <= high else Failed(node_id, name)


def numeric_inputs(host, class_type):
    inputs = host.object_info[class_type]["input"]
    return [(name, spec[0], spec[1] if len(spec) > 1 else {})
            for name, spec in {**inputs.get("required", {}), **inputs.get("optional", {})}.items()
            if spec[0] in PRIMITIVE]


def node_homes(host):
    """class_type -> (pipeline name, node id) of the first pipeline that holds it."""
    homes = {}
    for pipeline, prompt in pipelines(host).items():
        for node_id, node in prompt.items():
            homes.setdefault(node["class_type"], (pipeline, node_id))
    return homes


def numeric_cases(host):
    bases, cases = pipelines(host), []
    primitive_range = {kind: host.spec(cls, "value")[1] for kind, cls in PRIMITIVE.items()}
    for class_type, (pipeline, node_id) in node_homes(host).items():
        if class_type not in host.ours:
            continue
        for name, kind, options in numeric_inputs(host, class_type):
            for label, value in numeric_values(kind, options):
                literal = copy.deepcopy(bases[pipeline])
                literal[node_id]["inputs"][name] = value
                cases.append((f"{class_type}.{name} = {label} ({value}) typed in", literal,
                              expected_numeric(kind, options, value, False, node_id, name)))
                low, high = primitive_range[kind]["min"], primitive_range[kind]["max"]
                if math.isnan(value) and kind == "FLOAT" or math.isfinite(value) and low <= value <= high:
                    linked = copy.deepcopy(bases[pipeline])
                    linked["source"] = {"class_type": PRIMITIVE[kind], "inputs": {"value": value}}
                    linked[node_id]["inputs"][name] = link("source")
                    cases.append((f"{class_type}.{name} = {label} ({value}) linked", linked,
                                  expected_numeric(kind, options, value, True, node_id, name)))
    return cases


def combo_inputs(host, class_type):
    inputs = host.object_info[class_type]["input"]
    return [name for name, spec in {**inputs.get("required", {}), **inputs.get("optional", {})}.items()
            if spec[0] == "COMBO" or isinstance(spec[0], list)]


def combo_cases(host):
    """Every combo input at a value that is not one of its choices (a stale workflow, an API user's typo): ComfyUI
    0.3.75 does not check a V3 node's combos, so the node must."""
    bases, cases = pipelines(host), []
    for class_type, (pipeline, node_id) in node_homes(host).items():
        if class_type not in host.ours:
            continue
        for name in combo_inputs(host, class_type):
            case = copy.deepcopy(bases[pipeline])
            case[node_id]["inputs"][name] = "not one of the choices"
            cases.append((f"{class_type}.{name} = 'not one of the choices'", case, Failed(node_id, name)))
    return cases


# ---------------------------------------------------------------------------------------------- the tests

def test_every_node_and_input_has_cases(host):
    """Every DragEdit node is in a base prompt, every numeric and combo input of it gets its cases, every string
    input has a strategy and every optional input connected in a base prompt an expected outcome when left
    unconnected."""
    homes = node_homes(host)
    assert set(host.ours) <= set(homes), f"nodes in no base prompt: {sorted(set(host.ours) - set(homes))}"
    covered = {(case[0].split(" = ")[0]) for case in numeric_cases(host) + combo_cases(host)}
    for class_type in host.ours:
        for name in [name for name, _, _ in numeric_inputs(host, class_type)] + combo_inputs(host, class_type):
            assert f"{class_type}.{name}" in covered, f"{class_type}.{name} has no case"
        inputs = host.object_info[class_type]["input"]
        for name, spec in {**inputs.get("required", {}), **inputs.get("optional", {})}.items():
            if spec[0] == "STRING":
                assert (class_type, name) in STRING_STRATEGIES, f"{class_type}.{name} has no string strategy"
    for pipeline, prompt in pipelines(host).items():
        for node_id, node in prompt.items():
            if node["class_type"] not in host.ours:
                continue
            optional = host.object_info[node["class_type"]]["input"].get("optional", {})
            for name in optional:
                if isinstance(node["inputs"].get(name), list):
                    assert (node["class_type"], name) in UNCONNECTED, \
                        f"{node['class_type']}.{name}: no expected outcome when unconnected"


def test_the_base_prompts_run(host):
    """Each base prompt runs and saves a finite latent and an image: the cases' errors come from their one bad
    value."""
    run_cases(host, "base prompts", [(name, prompt, Runs()) for name, prompt in pipelines(host).items()])


def test_numeric_inputs_at_nan_inf_and_past_their_bounds(host):
    run_cases(host, "numeric", numeric_cases(host))


def test_combo_inputs_outside_their_choices(host):
    run_cases(host, "combo", combo_cases(host))


# ---------------------------------------------------------------------------------------------- unconnected inputs

UNCONNECTED = {   # (node, optional input connected in a base prompt) -> the outcome when it is left unconnected
    ("DragEditFeatureExtractor", "memory_bank"): "runs",          # no preview
    ("DragEditFeatureExtractor", "positive"): "fails",            # the preview needs the prompt
    ("DragEditVisualCrossAttention", "memory_bank_replace"): "fails",
    ("DragEditVisualCrossAttention", "mask_base"): "fails",
    ("DragEditVisualCrossAttention", "mask_replace"): "fails",
    ("DragEditGuidedSampler", "memory_bank_replace"): "fails",
    ("DragEditEnergyGuidanceDrag", "mask"): "runs",               # the whole image is editable
    ("DragEditPoints", "mask"): "runs",
    ("DragEditPointTracker", "image"): "runs",                    # preview on a blank canvas
    ("DragEditPointTracker", "points"): "runs",                   # blank preview
    ("DragEditAlDDScheduler", "motion"): "runs",                  # the preset's loss
    ("DragEditAlDDScheduler", "tracker"): "runs",
    ("DragEditAlDDScheduler", "mask"): "runs",
    ("DragEditAlDDScheduler", "image"): "runs",
    ("DragEditIdentityLoRA", "latent"): "fails",                  # neither latent nor image + vae
    ("DragEditIdentityLoRA", "positive"): "runs",                 # an all-zero text context
}


def unconnected_cases(host):
    cases, done = [], set()
    for pipeline, prompt in pipelines(host).items():
        for node_id, node in prompt.items():
            optional = host.object_info.get(node["class_type"], {}).get("input", {}).get("optional", {})
            for name in optional:
                key = (node["class_type"], name)
                if node["class_type"] not in host.ours or key in done or not isinstance(node["inputs"].get(name),
                                                                                           list):
                    continue
                done.add(key)
                case = copy.deepcopy(prompt)
                del case[node_id]["inputs"][name]
                expected = Runs() if UNCONNECTED[key] == "runs" else Failed(node_id, name)
                cases.append((f"{pipeline}: {node['class_type']}.{name} unconnected", case, expected))
    return cases


def test_optional_inputs_left_unconnected(host):
    run_cases(host, "unconnected optional inputs", unconnected_cases(host))


# ---------------------------------------------------------------------------------------------- the review's list

def _set(prompt, node_id, **inputs):
    prompt[node_id]["inputs"].update(inputs)
    return prompt


def _linked(prompt, node_id, name, class_type, value):
    prompt["source"] = {"class_type": class_type, "inputs": {"value": value}}
    prompt[node_id]["inputs"][name] = link("source")
    return prompt


def _resize_from_points(host, pairs):
    """Resize with offset and scale linked from Drag Points' arrows, as the node's tooltip suggests."""
    p = dragon(host, "resize")
    p.add("points", "DragEditPoints", image=link("resolution"), points_json=points_json(*pairs))
    return _set(p, "guidance", offset_x=link("points", 1), offset_y=link("points", 2), scale=link("points", 3))


def listed_cases(host):
    """The outside review's cases (issue 11), each by its name there."""
    points = Failed("points", "points_json")
    deep = Rejected("points", "points_json", text="DragEdit Drag Points Editor: input 'points_json'")
    return [
        ("Guided Sampler cfg NaN (was: success, all-black image)",
         _set(dragon(host, "move"), "sampler", cfg=math.nan), Failed("sampler", "cfg")),
        ("Guided Sampler sde_strength NaN (was: taken as 0)",
         _set(dragon(host, "move"), "sampler", sde_strength=math.nan), Failed("sampler", "sde_strength")),
        ("Resize scale 11 (max 10)", _set(dragon(host, "resize"), "guidance", scale=11.0),
         Rejected("guidance", "scale")),
        ("Resize scale 87 (max 10)", _set(dragon(host, "resize"), "guidance", scale=87.0),
         Rejected("guidance", "scale")),
        ("Resize scale 87 linked", _linked(dragon(host, "resize"), "guidance", "scale", "PrimitiveFloat", 87.0),
         Failed("guidance", "scale")),
        ("Paste scale 11 (max 10)", _set(dragon(host, "paste"), "guidance", scale=11.0),
         Rejected("guidance", "scale")),
        ("Feature Extractor custom scale 0.001 (min 0.0625)", custom_features(host, scale=0.001),
         Rejected("features", "scale")),
        ("Feature Extractor custom weights 1e999", custom_features(host, weights="1e999, 1"),
         Failed("features", "weights")),
        ("Feature Extractor: one message, about the input set (no 'modes')",
         custom_features(host, blocks="5, 5"), Failed("features", "blocks", avoid=("weight",))),
        ("Feature Extractor custom resize 'cubic' (ComfyUI does not check a V3 node's combos)",
         custom_features(host, resize="cubic"), Failed("features", "resize")),
        ("points JSON nested 100000 deep (was: RecursionError)", drag_points(host, "[" * 100000), deep),
        ("points JSON nested 5000 deep, balanced", drag_points(host, "[" * 5000 + "]" * 5000), deep),
        ("points JSON: pairs nested 3000 deep",
         drag_points(host, '{"version":1,"image_size":[64,64],"pairs":' + "[" * 3000 + "]" * 3000 + "}"), deep),
        ("points JSON with a 5000-digit coordinate", drag_points(host, f"[[{'9' * 5000}, 1, 2, 3]]"), deep),
        ("points JSON with a 400-digit coordinate", drag_points(host, f"[[{'9' * 400}, 1, 2, 3]]"), deep),
        ("DDIM Inversion strength NaN (was: cannot convert float NaN to integer)",
         _set(dragon(host, "move"), "inversion", strength=math.nan), Failed("inversion", "strength")),
        ("Resize scale near zero from Drag Points' arrows (was: blames the offset)",
         _resize_from_points(host, [(44, 52, 44, 52), (52, 52, 44.008, 52)]), Failed("guidance", "scale")),
        ("Resize scale 0.05 shrinks a 16 px object to nothing (not the offset's fault)",
         _set(dragon(host, "resize"), "guidance", scale=0.05), Failed("guidance", "scale")),
        ("Drag Points' second handle on the first (no scale)",
         _resize_from_points(host, [(44, 52, 40, 52), (44, 52, 50, 52)]), points),
        ("Drag Points with no pair blocks its consumers",
         _set(dragon(host, "drag"), "points", points_json='{"version":1,"image_size":[0,0],"pairs":[]}'),
         Failed("points", "points_json", at="guidance")),
        ("SD 2.1 unCLIP UNet fed SD-1.5's text encoding (was: must specify y)", model_check(host, UNCLIP_UNET),
         Failed("inversion", "positive")),
        ("9-channel SD-1.5 inpainting UNet (was: crash in a convolution)", model_check(host, INPAINTING_UNET),
         Failed("inversion", "model")),
    ]


def test_the_cases_the_review_listed(host):
    run_cases(host, "listed by the review", listed_cases(host))


# ---------------------------------------------------------------------------------------------- malformed strings

RAW = "__raw_json_token__"    # a placeholder replaced by a raw JSON token json.dumps cannot write (NaN, 1e999)


def _dumps(draw, value):
    """JSON text of `value` in one of the layouts people and tools write."""
    text = json.dumps(value, indent=draw(st.sampled_from([None, 0, 2])),
                      separators=draw(st.sampled_from([None, (",", ":"), (" , ", " : ")])))
    return text


@st.composite
def _valid_points(draw):
    """(document, pairs, size): a well-formed points document; size None when it states none."""
    form = draw(st.sampled_from(["canvas", "canvas, unknown size", "flat list", "list of pairs"]))
    size = draw(st.sampled_from([(SIDE, SIDE), (128, 96), (37, 200)])) if form == "canvas" else (SIDE, SIDE)

    def coordinate(limit):   # the last sub-pixel too: rescaled, it must not round onto the edge
        return st.one_of(st.integers(0, limit - 1), st.floats(0, limit, exclude_max=True),
                         st.just(math.nextafter(limit, 0)))

    pair = st.tuples(coordinate(size[0]), coordinate(size[1]), coordinate(size[0]), coordinate(size[1]))
    pairs = draw(st.lists(pair, min_size=0 if form.startswith("canvas") else 1, max_size=3))
    if form.startswith("canvas"):
        doc = {"version": 1, "image_size": list(size) if form == "canvas" else [0, 0],
               "pairs": [list(p) for p in pairs]}
        if draw(st.booleans()):
            doc["note"] = draw(st.text(max_size=8))   # keys the format does not know are ignored
        keys = draw(st.permutations(list(doc)))
        doc = {k: doc[k] for k in keys}
    elif form == "flat list":
        doc = [point for p in pairs for point in (list(p[:2]), list(p[2:]))]
    else:
        doc = [list(p) for p in pairs]
    return doc, pairs, size if form == "canvas" else None


def _points_outcome(pairs):
    """A well-formed document: no pair blocks the consumers; a second pair whose handles or targets coincide sets
    no scale (Drag Points refuses it when it runs); anything else runs."""
    if not pairs:
        return "blocked"
    if len(pairs) >= 2 and (pairs[0][:2] == pairs[1][:2] or pairs[0][2:] == pairs[1][2:]):
        return "fails"
    return "runs"


_JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False,
                          allow_infinity=False), st.text(max_size=6))
_NOT_A_NUMBER = st.one_of(st.none(), st.booleans(), st.text(max_size=6), st.lists(st.integers(), max_size=2),
                          st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
                          st.sampled_from([f"{RAW}NaN", f"{RAW}Infinity", f"{RAW}-Infinity", f"{RAW}1e999",
                                           f"{RAW}-1e999", f"{RAW}{'9' * 400}", f"{RAW}{'9' * 5000}"]))


@st.composite
def points_json_cases(draw):
    """(text, outcome): a valid points document, or one broken in one known way."""
    doc, pairs, size = draw(_valid_points())
    text = _dumps(draw, doc)
    corruption = draw(st.sampled_from(["none", "truncated", "trailing junk", "version", "pairs", "arity",
                                       "coordinate", "outside", "image_size", "scalar", "nesting"]))
    if corruption == "none":
        return text, _points_outcome(pairs)
    if corruption == "truncated":
        return text[:draw(st.integers(0, len(text) - 1))], "rejected"
    if corruption == "trailing junk":
        return text + draw(st.text(min_size=1, max_size=8).filter(str.strip)), "rejected"
    if corruption == "scalar":
        return _dumps(draw, draw(_JSON_SCALARS)), "rejected"
    if corruption == "nesting":
        depth = draw(st.integers(1, 20000))
        text = draw(st.sampled_from(["[" * depth, "[" * depth + "]" * depth, '{"pairs":' * depth]))
        return text, "blocked" if text == "[]" else "rejected"   # [] is an empty list of pairs
    canvas = isinstance(doc, dict)
    if corruption in ("version", "pairs", "image_size") and not canvas:
        doc, canvas = {"version": 1, "image_size": [0, 0], "pairs": [list(p) for p in pairs] or [[1, 2, 3, 4]]}, True
    if corruption == "version":
        doc["version"] = draw(st.one_of(st.integers().filter(lambda v: v != 1), st.booleans(), st.none(),
                                        st.floats(allow_nan=False).filter(lambda v: v != 1), st.text(max_size=3)))
    elif corruption == "pairs":
        doc["pairs"] = draw(st.one_of(_JSON_SCALARS, st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
    elif corruption == "image_size":
        doc["image_size"] = draw(st.one_of(
            _JSON_SCALARS, st.lists(st.integers(1, 999), min_size=0, max_size=4).filter(lambda v: len(v) != 2),
            st.tuples(st.integers(-999, -1), st.integers(1, 999)).map(list),
            st.tuples(st.just(0), st.integers(1, 999)).map(list),
            st.tuples(st.floats(1, 999).filter(lambda v: v != int(v)), st.integers(1, 999)).map(list),
            st.tuples(st.text(max_size=3), st.integers(1, 999)).map(list)))
    else:
        rows = doc["pairs"] if canvas else doc
        if not rows:
            rows.append([1, 2, 3, 4])
        row = draw(st.integers(0, len(rows) - 1))
        if corruption == "arity":
            width = draw(st.sampled_from([0, 1, 3, 5, 6] + ([2] if canvas else [])))
            rows[row] = draw(st.lists(st.integers(0, 9), min_size=width, max_size=width))
        elif corruption == "coordinate":
            rows[row][draw(st.integers(0, len(rows[row]) - 1))] = draw(_NOT_A_NUMBER)
        else:   # outside: a coordinate at or past the image's edge, or negative
            axis = draw(st.integers(0, len(rows[row]) - 1))
            limit = (size or (SIDE, SIDE))[axis % 2] if len(rows[row]) == 4 else SIDE
            rows[row][axis] = draw(st.one_of(st.integers(limit, limit + 999), st.floats(limit, 1e6),
                                             st.floats(-1e6, -1e-3), st.integers(-999, -1)))
            if not canvas or size is None:
                return _raw(_dumps(draw, doc)), "fails"   # no size to check against before the image arrives
    return _raw(_dumps(draw, doc)), "rejected"


def _raw(text):
    """The placeholders' strings replaced by their raw tokens."""
    return re.sub(f'"{RAW}([^"]*)"', r"\1", text)


POINTS_OUTCOMES = {
    "runs": Runs(),
    "rejected": Rejected("points", "points_json", text="DragEdit Drag Points Editor: input 'points_json'"),
    "fails": Failed("points", "points_json"),
    "blocked": Failed("points", "points_json", at="save"),
}
STRING_STRATEGIES = {("DragEditPoints", "points_json"): points_json_cases}


@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=points_json_cases())
def test_points_json_strings(host, case):
    text, outcome = case
    failures = run_case(host, "points_json strings (hypothesis)", f"points_json {text[:200]!r}",
                        drag_points(host, text), POINTS_OUTCOMES[outcome])
    assert not failures, "\n".join(failures)


LAST_BLOCK = 10   # SD 1.x: the output blocks a Feature Extractor can tap are 0..10 (the demo model is SD 1.x)
FLAT_BLOCKS = 2   # blocks 0 and 1 give 1x1 maps of a 64 px image (latent / 8): their preview alone is flat by nature


def _join(draw, tokens):
    return draw(st.sampled_from([",", ", ", " ,  "])).join(tokens)


def _is_int(token):
    try:
        int(token)
        return True
    except ValueError:
        return False


def _is_float(token):
    try:
        float(token)
        return True
    except ValueError:
        return False


_JUNK = st.text(alphabet=st.characters(blacklist_characters=",", blacklist_categories=("Cs",)), min_size=1,
                max_size=6).filter(lambda s: s.replace(" ", "") != "")


@st.composite
def feature_string_cases(draw):
    """(widgets, outcome): custom blocks and weights, valid or broken in one known way; or junk under a preset,
    which does not read them."""
    blocks = draw(st.lists(st.integers(0, LAST_BLOCK), min_size=1, max_size=4, unique=True))
    if max(blocks) < FLAT_BLOCKS:
        blocks.append(draw(st.integers(FLAT_BLOCKS, LAST_BLOCK)))
    weights = draw(st.one_of(st.just(None), st.lists(st.floats(0, 100), min_size=len(blocks),
                                                     max_size=len(blocks))))
    block_tokens = [str(b) for b in blocks]
    weight_tokens = [] if weights is None else [draw(st.sampled_from([repr(w), f"{w:g}", f" {w} "]))
                                                for w in weights]
    widgets = dict(resize=draw(st.sampled_from(["nearest", "bilinear"])),
                   scale=draw(st.sampled_from([0.0625, 0.25, 0.5, 1.0])))
    corruption = draw(st.sampled_from(["none", "preset ignores junk", "no block", "junk block", "block out of range",
                                       "duplicate block", "weight count", "negative weight", "weight not finite",
                                       "junk weight"]))
    outcome = "runs"
    if corruption == "preset ignores junk":
        widgets["preset"] = "DragonDiffusion"
        block_tokens, weight_tokens = [draw(_JUNK)], [draw(_JUNK)]
    elif corruption == "no block":
        block_tokens, outcome = draw(st.sampled_from([[], [""], [" ", ""]])), "blocks"
    elif corruption == "junk block":
        block_tokens.insert(draw(st.integers(0, len(block_tokens))),
                            draw(_JUNK.filter(lambda s: not _is_int(s.replace(" ", "")))))
        outcome = "blocks"
    elif corruption == "block out of range":
        block_tokens.append(str(draw(st.one_of(st.integers(LAST_BLOCK + 1, 10**6), st.integers(-10**6, -1)))))
        outcome = "blocks"
    elif corruption == "duplicate block":
        block_tokens.append(draw(st.sampled_from(block_tokens)))
        outcome = "blocks"
    elif corruption == "weight count":
        count = draw(st.integers(1, 6).filter(lambda n: n != len(blocks)))
        weight_tokens, outcome = [str(draw(st.floats(0, 10))) for _ in range(count)], "weights"
    elif corruption == "negative weight":
        weight_tokens = [str(draw(st.floats(0, 10))) for _ in blocks]
        weight_tokens[draw(st.integers(0, len(blocks) - 1))] = str(draw(st.floats(-1e9, -1e-9)))
        outcome = "weights"
    elif corruption == "weight not finite":
        weight_tokens = [str(draw(st.floats(0, 10))) for _ in blocks]
        weight_tokens[draw(st.integers(0, len(blocks) - 1))] = draw(st.sampled_from(
            ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1e999"]))
        outcome = "weights"
    elif corruption == "junk weight":
        weight_tokens = [str(draw(st.floats(0, 10))) for _ in blocks]
        weight_tokens[draw(st.integers(0, len(blocks) - 1))] = draw(
            _JUNK.filter(lambda s: not _is_float(s.replace(" ", ""))))
        outcome = "weights"
    widgets.update(blocks=_join(draw, block_tokens), weights=_join(draw, weight_tokens))
    return widgets, outcome


FEATURE_OUTCOMES = {
    "runs": Runs(),
    "blocks": Failed("features", "blocks", avoid=("weight",)),
    "weights": Failed("features", "weights"),
}
STRING_STRATEGIES.update({("DragEditFeatureExtractor", "blocks"): feature_string_cases,
                          ("DragEditFeatureExtractor", "weights"): feature_string_cases})


@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=feature_string_cases())
def test_feature_extractor_custom_strings(host, case):
    widgets, outcome = case
    failures = run_case(host, "Feature Extractor strings (hypothesis)", f"Feature Extractor {widgets}",
                        custom_features(host, **widgets), FEATURE_OUTCOMES[outcome])
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------------- Identity LoRA save_name

_NAME_PART = st.text(st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters="_-. ",
                                   max_codepoint=0x24F), min_size=1, max_size=12).filter(lambda t: t.strip(" .") == t)


@st.composite
def save_name_cases(draw):
    """(save_name, outcome): a name or sub-folder path inside models/loras saves; one that leaves it (.., an
    absolute path) or holds a control character (NUL included) is refused at the input."""
    kind = draw(st.sampled_from(["inside", "leaves", "control"]))
    parts = draw(st.lists(_NAME_PART, min_size=1, max_size=3))
    if kind == "inside":
        return "/".join(parts), "runs"
    if kind == "leaves":
        up = draw(st.integers(1, 3))
        return draw(st.sampled_from(["../" * up + "/".join(parts), "/" + "/".join(parts),
                                     parts[0] + "/" + "../" * (up + 1) + parts[-1]])), "fails"
    name = "/".join(parts)
    at = draw(st.integers(0, len(name)))
    return name[:at] + draw(st.sampled_from(["\x00", "\n", "\t", "\x1b", "\x7f"])) + name[at:], "fails"


LORA_OUTCOMES = {"runs": Runs(), "fails": Failed("lora", "save_name")}
STRING_STRATEGIES[("DragEditIdentityLoRA", "save_name")] = save_name_cases


def identity_lora(host, save_name):
    """Identity LoRA (one step) with a save name, then DDIM Inversion on its MODEL, saved."""
    p = _common(host)
    p.add("lora", "DragEditIdentityLoRA", model=link("model"), latent=link("latent"), positive=link("text"), steps=1,
          save_name=save_name)
    _inversion(p, model=link("lora"))
    _sinks(p, link("inversion", 1))
    return p


@settings(max_examples=EXAMPLES // 2, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=save_name_cases())
def test_identity_lora_save_names(host, case):
    name, outcome = case
    failures = run_case(host, "Identity LoRA save names (hypothesis)", f"save_name {name!r}",
                        identity_lora(host, name), LORA_OUTCOMES[outcome])
    assert not failures, "\n".join(failures)
