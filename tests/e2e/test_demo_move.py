"""The main command's edit (`bash scripts/demo.sh`: example_workflows/demo_move.json on the demo model) through a
real ComfyUI server, scored against the scene's exact ground truth (tools/scenes.py) with the bench's score: the
disc lands on its target, keeps its colour, and the rest of the image stays as it was, to the shipped model's
measured accuracy."""
import math

import numpy as np
from PIL import Image

from bench.drag_accuracy import score
from scripts.draw_example_inputs import demo_case
from tests.support import workflow
from tests.support.pack import REPO
from tools import scenes

# The shipped demo model's measured accuracy (this test through the server: 0.0 px, 4.6, 18.1; bench.edit_ablation's
# default row, without demo_move.json's GrowMask: 0.0, 4.8, 16.5; before keep_latent_mean the main command scored
# 1.4 px, 10.9, 13.6 at energy scale 1500), with a margin for another CPU's rounding. Issue 15's targets are 3 px, 6
# and 12: the last is below what the demo model reconstructs the unmoved disc to (13.8 inside it, inversion +
# reconstruction), so that bound holds the measured accuracy rather than the target.
MAX_CENTROID_PX = 3.0      # disc centroid to its true place (the target)
MAX_UNCHANGED_MAE = 6.0    # 0-255, outside the disc's old and new place (the target)
MAX_OBJECT_MAE = 19.5      # 0-255, inside the disc's true place, against the ground truth (target 12)
MAX_VACATED_RATIO = 0.55   # the disc's old place, error against the ground truth over error against the input (0.51)


def test_main_command_moves_the_disc_onto_its_target_with_its_colour(comfy_server):
    prompt = workflow.ui_to_api(workflow.load(REPO / "example_workflows" / "demo_move.json"),
                                comfy_server.object_info())
    files = comfy_server.output_files(comfy_server.run(prompt, timeout=900))
    with Image.open(next(f for f in files if "output" in f.parts)) as im:
        output = np.asarray(im.convert("RGB"))
    case = demo_case()
    result = score(case, output)
    moved_away = math.dist(scenes.centroid(case.mask), scenes.centroid(case.expected_mask))
    assert result["centroid"] <= MAX_CENTROID_PX < moved_away, result
    assert result["unchanged"] <= MAX_UNCHANGED_MAE, result
    assert result["object"] <= MAX_OBJECT_MAE, result
    # The disc's old place is background again: much closer to the ground truth there than to the input's disc.
    vacated = (case.mask >= 0.5) & (case.expected_mask < 0.5)
    to_truth = np.abs(output.astype(np.int16) - case.expected.astype(np.int16))[vacated].mean()
    to_input = np.abs(output.astype(np.int16) - case.image.astype(np.int16))[vacated].mean()
    assert to_truth < MAX_VACATED_RATIO * to_input, (to_truth, to_input)
