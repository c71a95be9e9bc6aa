"""Where the development host lives, and a failure (never a skip) when it is missing."""
import os
import pathlib

import pytest

from tests.support.pack import REPO

DEV = pathlib.Path(os.environ.get("DRAGEDIT_DEV_DIR", REPO / ".dev"))
COMFY_ROOT = DEV / "ComfyUI"
PYTHON = DEV / "venv" / "bin" / "python"
TEST_CKPT_NAME = "dragedit_test_sd15.safetensors"
TEST_CKPT = COMFY_ROOT / "models" / "checkpoints" / TEST_CKPT_NAME
# The random-weight, reduced-width SDXL-topology checkpoint (tests/support/tiny_sdxl.py), kept out of the dev ComfyUI's
# models/: only a server with the test node pack tests/support/reduced_sdxl detects it (tests/support/server.py).
TEST_SDXL_CKPT = DEV / "test_models" / "dragedit_test_sdxl.safetensors"
CHROMIUM = pathlib.Path("/usr/bin/chromium")


def require_host():
    """Fail with the command that builds the host: a layer whose host is missing must not pass silently."""
    missing = [str(p) for p in (COMFY_ROOT / "main.py", PYTHON, TEST_CKPT, TEST_SDXL_CKPT) if not p.exists()]
    if missing:
        pytest.fail(f"ComfyUI test host missing ({', '.join(missing)}): run `bash scripts/dev-env.sh --ui`",
                    pytrace=False)
