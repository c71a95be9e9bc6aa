"""A real ComfyUI server (main.py --cpu on loopback) loads the pack, validates, reports failures and stops cleanly.

The example workflows run from the real frontend in tests/browser/test_examples.py."""
import re
import shutil

import pytest

from tests.support import workflow
from tests.support.pack import REPO
from tests.support.server import PACK_DIR_NAME, ComfyServer, WorkflowFailed, make_base_dir

EXAMPLES = sorted((REPO / "example_workflows").glob("*.json"))


def pack_nodes(object_info):
    return {name: info for name, info in object_info.items() if info.get("python_module", "").endswith(PACK_DIR_NAME)}


def test_pack_imports_and_lists_its_nodes_in_one_category(comfy_server):
    assert not [l for l in _failed_imports(comfy_server.log()) if PACK_DIR_NAME in l]
    nodes = pack_nodes(comfy_server.object_info())
    declared = {m for f in (REPO / "nodes").glob("*.py") for m in re.findall(r'"(DragEdit[A-Z]\w+)"', f.read_text())}
    assert declared and set(nodes) == declared, (sorted(nodes), sorted(declared))
    for name, info in nodes.items():
        assert name.startswith("DragEdit"), name
        assert info["category"] == "DragEdit", (name, info["category"])
        assert len(info["description"]) > 20, (name, info["description"])


def _failed_imports(log):
    return [line for line in log.splitlines() if "IMPORT FAILED" in line]


def test_there_is_an_example_workflow():
    assert EXAMPLES, "example_workflows/ holds no workflow"


def run_example(server, path):
    prompt = workflow.ui_to_api(workflow.load(path), server.object_info())
    entry = server.run(prompt, timeout=900)
    return server.output_files(entry)


def test_the_harness_sees_a_node_that_raises(tmp_path):
    """Break the pack on purpose (every node raises) and check the harness reports the failure."""
    broken = tmp_path / PACK_DIR_NAME
    shutil.copytree(REPO, broken, ignore=shutil.ignore_patterns(".dev", ".git", "tests", "__pycache__"))
    with open(broken / "nodes" / "__init__.py", "a") as f:
        f.write("\n\ndef _deliberately_broken(cls, **inputs):\n"
                "    raise RuntimeError('deliberately broken by the harness test')\n\n\n"
                "for _module in _MODULES:\n"
                "    for _node in _module.NODES:\n"
                "        _node.execute = classmethod(_deliberately_broken)\n")
    with ComfyServer(base_dir=make_base_dir(pack_dir=broken)) as server:
        assert pack_nodes(server.object_info()), "the broken copy of the pack did not load"
        with pytest.raises(WorkflowFailed, match="deliberately broken"):
            run_example(server, EXAMPLES[0])


def test_steps_below_two_are_refused_when_queued(comfy_server):
    """ComfyUI validates widget bounds at POST /prompt: the user sees which node and input, before anything runs."""
    prompt = workflow.ui_to_api(workflow.load(REPO / "example_workflows" / "reconstruct.json"), comfy_server.object_info())
    inversion = next(k for k, v in prompt.items() if v["class_type"] == "DragEditDDIMInversion")
    prompt[inversion]["inputs"]["steps"] = 1
    with pytest.raises(WorkflowFailed, match="value_smaller_than_min.*steps"):
        comfy_server.queue(prompt)


def test_interrupt_stops_a_long_inversion_cleanly(comfy_server):
    """POST /interrupt during a 999-step inversion (the most the node takes) ends the prompt within seconds; the server keeps working."""
    import time

    prompt = workflow.ui_to_api(workflow.load(REPO / "example_workflows" / "reconstruct.json"), comfy_server.object_info())
    inversion = next(k for k, v in prompt.items() if v["class_type"] == "DragEditDDIMInversion")
    prompt[inversion]["inputs"]["steps"] = 999
    prompt_id = comfy_server.queue(prompt)
    time.sleep(4)
    comfy_server.request("/interrupt", {})
    started = time.time()
    with pytest.raises(WorkflowFailed, match="interrupted"):
        comfy_server.wait(prompt_id, timeout=120)
    assert time.time() - started < 30
    assert comfy_server.get("/object_info/DragEditDDIMInversion")
