"""Copy the pictures the browser tests took of each example's real run into the repo: the Templates thumbnail
(example_workflows/<name>.jpg: input -> result under its title) and the README picture of the whole graph after
the run (docs/images/examples/<name>.jpg). Run the tests first (they write tests/artifacts/):

    bash scripts/test.sh tests/browser/test_examples.py -k 1.32.9 && .dev/venv/bin/python -m scripts.snapshot_workflows
"""
import shutil
import sys

from PIL import Image

from tests.support.pack import REPO

ARTIFACTS = REPO / "tests" / "artifacts"
EXAMPLES = REPO / "example_workflows"
README_IMAGES = REPO / "docs" / "images" / "examples"


def main(names):
    names = names or sorted(p.stem for p in EXAMPLES.glob("*.json"))
    missing = [n for n in names if not (ARTIFACTS / "thumbnails" / f"{n}.jpg").exists()
               or not (ARTIFACTS / "examples" / f"{n}.png").exists()]
    README_IMAGES.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name in missing:
            continue
        shutil.copy(ARTIFACTS / "thumbnails" / f"{name}.jpg", EXAMPLES / f"{name}.jpg")
        with Image.open(ARTIFACTS / "examples" / f"{name}.png") as shot:
            shot.convert("RGB").save(README_IMAGES / f"{name}.jpg", "JPEG", quality=82)
        print(f"wrote example_workflows/{name}.jpg and docs/images/examples/{name}.jpg")
    if missing:
        sys.exit(f"no pictures of {missing} in {ARTIFACTS}: run tests/browser/test_examples.py for them")


if __name__ == "__main__":
    main(sys.argv[1:])
