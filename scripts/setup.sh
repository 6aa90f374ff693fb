#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with everything the
# tests and the quickstart need. Safe to run again: satisfied requirements are skipped.
#   VENV=path  put the environment elsewhere
#   EXTRAS=... which extras to install (default: test,tflite-convert,predict,search)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VENV:-.venv}"
EXTRAS="${EXTRAS:-test,tflite-convert,predict,search}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# A CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[${EXTRAS}]"
# Once-for-All's own package: the reference the OFA interop tests and `python -m benchmarks
# ofa` compare with (hwnas never imports it). Without --no-deps it would pull torchvision
# and a CUDA build of torch.
case ",$EXTRAS," in
    *,test,*) "$VENV/bin/python" -m pip install -q --no-deps "ofa==0.1.0.post202307202001" ;;
esac
echo "environment ready: $VENV"
