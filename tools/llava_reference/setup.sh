#!/usr/bin/env bash
# The LLaVA reference environment: LLaVA's own code (llava-torch 1.2.2.post1, the paper's codebase) beside the
# library versions it was written for, in a virtual environment of its own. Only `make_golden.py` runs in it;
# connectorlab and its tests never import it. Usage: tools/llava_reference/setup.sh [VENV] (default .venv-llava)
set -euo pipefail
venv=${1:-.venv-llava}
python3 -m venv "$venv"
"$venv/bin/pip" install -q "torch==2.13.0" "transformers==4.36.2" "tokenizers==0.15.0" "sentencepiece" "protobuf" \
    "accelerate==0.21.0" "pillow" "numpy<2" "safetensors" "mistral-common" "pandas" "shortuuid"
# --no-deps: llava-torch pins torch 2.1 and a CUDA stack it does not need for these functions
"$venv/bin/pip" install -q --no-deps "llava-torch==1.2.2.post1"
"$venv/bin/python" -c "import llava.conversation, llava.mm_utils, llava.train.train, llava.model; print('LLaVA reference ready')"
