"""Draw example_workflows/inputs/dragedit_scene_b.png, the second image of the two-image examples (appearance,
paste): a green ball on a table, 256x256 like dragedit_scene.png, in flat colours so Image Color To Mask finds it.

    .dev/venv/bin/python -m scripts.draw_example_inputs
"""
from PIL import Image, ImageDraw

from tests.support.pack import REPO

OUT = REPO / "example_workflows" / "inputs" / "dragedit_scene_b.png"
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


if __name__ == "__main__":
    draw().save(OUT)
    print(f"wrote {OUT.relative_to(REPO)}")
