#!/usr/bin/env bash
# The one command: make bench/.venv if missing, install bench/requirements.txt
# into it, run bench/run.py with the arguments given (e.g. --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x bench/.venv/bin/python ]; then
    python3 -m venv bench/.venv
fi
if ! cmp -s bench/requirements.txt bench/.venv/.installed-requirements; then
    bench/.venv/bin/python -m pip install --quiet --upgrade pip
    bench/.venv/bin/python -m pip install --quiet -r bench/requirements.txt
    cp bench/requirements.txt bench/.venv/.installed-requirements
fi
exec bench/.venv/bin/python bench/run.py "$@"
