#!/usr/bin/env bash
# Run every test layer (unit, host, e2e, browser) with one pytest command, building the dev host first
# if it is missing (a cached host costs seconds). Extra arguments go to pytest, e.g. `-m unit` or `-k move`.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$REPO/scripts/dev-env.sh" --ui >/dev/null
cd "$REPO"
exec "${DRAGEDIT_DEV_DIR:-$REPO/.dev}/venv/bin/python" -m pytest "$@"
