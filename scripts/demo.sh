#!/usr/bin/env bash
# The main job: a drag edit through a real ComfyUI (example_workflows/demo_move.json on the demo model by default;
# move.json with --ckpt).
# Arguments go to scripts/demo.py: [--ckpt your_sd15.safetensors] [--workflow NAME] [--out DIR]
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$REPO/scripts/dev-env.sh" >/dev/null
cd "$REPO"
exec "${DRAGEDIT_DEV_DIR:-$REPO/.dev}/venv/bin/python" -m scripts.demo "$@"
