"""Pictures of a run as the frontend draws it: the whole graph (README.md) and the Templates thumbnail, the input
node and the result node side by side under the example's title and description (the frontend shows only the
file name as both). Written under tests/artifacts/; scripts/snapshot_workflows.py copies them into the repo."""
import io

from PIL import Image, ImageDraw, ImageFont

THUMB = (640, 420)
CAPTION = 74


def _font(size):
    return ImageFont.load_default(size=size)


def _crop(shot, box, pad=4):
    x0, y0, x1, y1 = box
    return shot.crop((max(0, int(x0) - pad), max(0, int(y0) - pad), min(shot.width, int(x1) + pad),
                      min(shot.height, int(y1) + pad)))


def _fit(image, width, height):
    scale = min(width / image.width, height / image.height)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)


def thumbnail(screenshot_png, input_box, result_box, title, description):
    """input node -> result node, cropped from one screenshot of the finished run, captioned."""
    shot = Image.open(io.BytesIO(screenshot_png)).convert("RGB")
    out = Image.new("RGB", THUMB, (24, 24, 24))
    draw = ImageDraw.Draw(out)
    draw.text((16, 10), title, fill=(240, 240, 240), font=_font(26))
    draw.text((16, 44), description, fill=(185, 185, 185), font=_font(16))
    panel_w, panel_h = (THUMB[0] - 3 * 16 - 36) // 2, THUMB[1] - CAPTION - 16
    for k, box in enumerate((input_box, result_box)):
        panel = _fit(_crop(shot, box), panel_w, panel_h)
        x = 16 + k * (panel_w + 36 + 16) + (panel_w - panel.width) // 2
        out.paste(panel, (x, CAPTION + (panel_h - panel.height) // 2))
    mid_x, mid_y = 16 + panel_w + 26, CAPTION + panel_h // 2
    draw.line([(mid_x - 14, mid_y), (mid_x + 10, mid_y)], fill=(240, 240, 240), width=4)
    draw.polygon([(mid_x + 18, mid_y), (mid_x + 6, mid_y - 9), (mid_x + 6, mid_y + 9)], fill=(240, 240, 240))
    buffer = io.BytesIO()
    out.save(buffer, "JPEG", quality=88)
    return buffer.getvalue()
