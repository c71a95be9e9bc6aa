#!/usr/bin/env bash
# The main job: run a drag edit (example_workflows/move.json by default) through a real ComfyUI.
# Arguments go to scripts/demo.py: [--ckpt your_sd15.safetensors] [--workflow NAME] [--out DIR]
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$REPO/scripts/dev-env.sh" >/dev/null
cd "$REPO"
exec "${DRAGEDIT_DEV_DIR:-$REPO/.dev}/venv/bin/python" -m scripts.demo "$@"
