#!/usr/bin/env bash
# The training benchmark on a lent GPU machine (one NVIDIA H200: torch 2.11 CUDA 13, transformers 5.17, peft 0.21,
# accelerate 1.15, pyarrow 25; no trl, datasets, bitsandbytes or pydantic, and no package index). Whole script
# under 8 minutes, each run under its own time cap; writes bench/results/train_gpu.json with the GPU named.
#
# It installs the wheels bench/gpu_wheels.sh downloaded (carried in .wheels/), then benches a 7B Llama shape (hidden
# 4096, 32 layers: random init, the SmolLM2 tokenizer, no weights travel) through the train stage's code with the
# shipped params (QLoRA by `quantize: auto`, 16 rows a step, the runtime plan the stage makes there: micro-batch
# from free memory, padding-free, Liger where installed) for 4 epochs of summarize (100 steps), beside the bare
# step at the same micro-batch and the bf16 matmul peak; then variants of one epoch each (no padding-free,
# transformers' masked SDPA instead of sdpa_varlen, packing, no Liger, the whole step in one pass, torch.compile)
# for the fastest one.
#
# vLLM's CUDA build (hundreds of MB) cannot travel within what a call carries, so infer and serve are not run
# here: their CUDA arguments (dtype, tensor/data parallel, executor) are tested on the CPU against vLLM's own
# argument parsers (tests/inference/test_cuda_args.py).
#
#     bash bench/gpu_wheels.sh            # here, once: .wheels/ (~52 MB)
#     run: bash bench/gpu.sh              # there, carrying .wheels (results come back under $OUT)
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.wheels}
OUT_DIR=${OUT:-bench/results}
RESULT="$OUT_DIR/train_gpu.json"
SHAPE_DIR=${SHAPE_DIR:-/tmp/llamaduo-shape-7b}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
START=$SECONDS
mkdir -p "$OUT_DIR"

nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv || true

# resolve against what the machine has (a wheel is installed only where its copy is missing or too old); where a
# requirement cannot be met from the wheels, install them as they are and let the import check speak
pip install --no-index --find-links "$WHEELS" trl datasets bitsandbytes pydantic liger-kernel 2>&1 | tail -3 ||
    pip install --no-index --no-deps "$WHEELS"/*.whl 2>&1 | tail -3
python -c "import trl, datasets, bitsandbytes, pydantic, peft, transformers, torch; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'bitsandbytes', \
bitsandbytes.__version__, 'cuda', torch.cuda.is_available())" || { echo "the wheels did not install"; exit 1; }
pip check 2>&1 | tail -5 || true
echo "installed after $((SECONDS - START)) s"

TOK="$WHEELS/smollm2-tokenizer"
# the shipped run: 4 epochs of summarize (395 rows, 16 a step: 100 steps) and the bare step, 200 s each at most;
# variants of one epoch (25 steps) each, 100 s at most, most telling first (the JSON is rewritten after each, so
# the outer cap only drops the last ones); the whole under 470 s
timeout 470 python bench/train.py --shape 7b --tokenizer "$TOK" --shape-dir "$SHAPE_DIR" --rows 0 --set epochs=4 \
    --timeout 200 --variant-timeout 100 --out "$RESULT" \
    --variant "no-padding-free:epochs=1,padding_free=false" \
    --variant "sdpa-masked:epochs=1,attn_implementation=sdpa" \
    --variant "packing:epochs=1,packing=true" \
    --variant "no-liger:epochs=1,liger=false" \
    --variant "one-pass:epochs=1,micro_batch_size=16" \
    --variant "compile:epochs=1,torch_compile=true"
echo "bench rc $? after $((SECONDS - START)) s"
nvidia-smi --query-gpu=name,memory.used --format=csv || true
test -f "$RESULT" && cp "$RESULT" bench/results/train_gpu.json 2>/dev/null
exit 0
