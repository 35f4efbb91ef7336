#!/usr/bin/env bash
# Create the virtual environment and install the project (extra "test" for the test tooling).
# torch/torchvision are pinned to the releases that pip finds on this kind of machine's disk.
set -euo pipefail
venv=${1:-.venv}
python=${2:-python3.11}
extra=${3:-}
command -v "$python" >/dev/null 2>&1 || python=python3
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
fi
spec="."
[ -n "$extra" ] && spec=".[${extra}]"
"$venv/bin/pip" install --quiet "torch==2.14.1" "torchvision==0.29.1"
"$venv/bin/pip" install --quiet -e "$spec"
