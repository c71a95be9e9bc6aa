"""Draw example inputs: dragedit_scene_b.png, the second image of the two-image examples (appearance, paste): a
green ball on a table, 256x256 like dragedit_scene.png, in flat colours so Image Color To Mask finds it; and the
demo model's scene, a generated 128x128 move case (tools/scenes.py) with its object's mask as a second PNG.

    .dev/venv/bin/python -m scripts.draw_example_inputs
"""
from PIL import Image, ImageDraw

from tests.support.pack import REPO
from tools import scenes

INPUTS = REPO / "example_workflows" / "inputs"
OUT = INPUTS / "dragedit_scene_b.png"
DEMO_SCENE, DEMO_MASK = "dragedit_demo_scene.png", "dragedit_demo_mask.png"
DEMO_CASE_SEED = 5   # tools.scenes.drag_case(5, "move"): a dark disc on a noisy magenta ground, moved 30 px right
SIZE = 256
FLOOR_Y = 190
BALL_CENTRE, BALL_RADIUS = (170, 120), 34
BALL_FILL, BALL_OUTLINE = (60, 170, 70), (20, 90, 30)   # fill 0x3CAA46: the examples' Image Color To Mask colour


def draw() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE))
    pixels = image.load()
    for y in range(SIZE):
        for x in range(SIZE):
            pixels[x, y] = (150 + x // 10, 175 + y // 10, 205 - y // 10) if y < FLOOR_Y else (90, 100, 80)
    cx, cy = BALL_CENTRE
    r = BALL_RADIUS
    ImageDraw.Draw(image).ellipse((cx - r, cy - r, cx + r, cy + r), fill=BALL_FILL, outline=BALL_OUTLINE, width=3)
    return image


def demo_case() -> scenes.DragCase:
    return scenes.drag_case(DEMO_CASE_SEED, "move")


if __name__ == "__main__":
    draw().save(OUT)
    case = demo_case()
    Image.fromarray(case.image).save(INPUTS / DEMO_SCENE)
    Image.fromarray((case.mask * 255).round().astype("uint8")).save(INPUTS / DEMO_MASK)
    for name in (OUT.name, DEMO_SCENE, DEMO_MASK):
        print(f"wrote {(INPUTS / name).relative_to(REPO)}")
