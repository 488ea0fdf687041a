#!/usr/bin/env bash
# `pip install .` on a fresh venv gives a working `sslic` without torch (the runtime half of the project).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet "$repo"
if "$work/venv/bin/python" -m pip list 2>/dev/null | grep -i -E '^(torch|nvidia)'; then
  echo "the runtime install pulled in torch or CUDA packages"; exit 1
fi
image=$(ls "$repo"/../shared/data/kodak/*.png | head -1)
cd "$work"
"$work/venv/bin/sslic" compress "$image" k.sslc --level 1,4
"$work/venv/bin/sslic" info k.sslc > info.json
"$work/venv/bin/sslic" decompress k.sslc k.png --level 1
"$work/venv/bin/python" - <<'PY'
import json
import service.app  # the HTTP service imports from an installed package too
from PIL import Image
info = json.load(open("info.json"))
assert [entry["level"] for entry in info["levels"]] == [1, 4], info
with Image.open("k.png") as image:
    assert image.size == (info["width"], info["height"]), image.size
print(f"runtime-only install OK: {info['bytes']} bytes for levels 1 and 4")
PY
echo "runtime install check took $(( $(date +%s) - start )) s"
