#!/usr/bin/env bash
# The version floors in requirements.txt, tested: installs exactly the lowest
# version of every requirement ("pkg>=X" becomes "pkg==X") into a fresh
# virtual environment and runs the test suite there.
#
#   tools/test_floors.sh                # venv in .floors-venv/ (ignored by git)
#   tools/test_floors.sh /tmp/floors    # venv elsewhere
#
# Wheels only (a floor that needs a compiler does not count). Needs the
# package registry (torch alone is a few GB). The Python floor is
# checked separately on every run of the suite: tests/test_floors.py parses
# every file with Python 3.10's grammar.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.floors-venv}"

python3 -m venv "$venv"
grep -v '^#' requirements.txt | sed -E 's/>=/==/' > "$venv/floors.txt"
echo "installing the floors:" $(cat "$venv/floors.txt")
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: -r "$venv/floors.txt"
"$venv/bin/python" -m pip list --format=freeze | grep -iE '^(torch|torchvision|numpy|pillow|thop|tqdm|matplotlib|onnx|onnxruntime|pytest)=='
"$venv/bin/python" -m pytest -q tests
