#!/usr/bin/env bash
# One command that proves the GPU path on a CUDA machine, within about 8 minutes:
#   the gpu-marked tests; bench/engine.py (engine against the batched naive loop, batch 1/32/256,
#   bf16 and fp32, every bundled model and a random gpt-baby-size model); shakespeare-mingru against
#   shakespeare-gpt at batch 256 and 1,024 (bf16); bench/serve.py at 1/32/256 streams; where a
#   decode step's GPU time goes (bench/gpu_profile.py); gpt-baby training throughput, eager then
#   compiled, and the mingru preset's against the gpt of its size; the mingru recipe trained for
#   shakespeare-gpt's 5,500 iterations on its schedule, if time is left, to compare their validation
#   curves at equal characters seen; then docs/benchmarks-gpu.md (bench/gpu_report.py), naming the card.
#
#   bench/gpu_check.sh [--wheels DIR] [--data FILE] [--out DIR]
#
# --wheels: a folder of wheels to install what this Python lacks (the GPU machines have CUDA torch
# but not the web stack). --data: the training text (default ../shared/data/tinyshakespeare.txt;
# without it the training benchmark uses a generated text of the same alphabet). --out: where logs, results and the trained model go
# (default /tmp/charlm-gpu-check). Every step is bounded in time; a step that fails or cannot run
# is reported and the others go on. Results are written as they are measured.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS="" DATA="../shared/data/tinyshakespeare.txt" OUT_DIR="/tmp/charlm-gpu-check"
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS="$2"; shift 2 ;;
        --data) DATA="$2"; shift 2 ;;
        --out) OUT_DIR="$2"; shift 2 ;;
        *) echo "usage: $0 [--wheels DIR] [--data FILE] [--out DIR]" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/results.jsonl" STEPS="$OUT_DIR/steps.txt"
: > "$RESULTS"; : > "$STEPS"
START=$SECONDS
say() { echo "gpu-check [$((SECONDS - START)) s]: $*" >&2; }
BUDGET=${CHARLM_GPU_CHECK_BUDGET_S:-540}  # seconds for all the steps together
step() {  # step NAME TIMEOUT COMMAND...: run it bounded (and within the budget), record how it ended
    local name=$1 limit=$2 status=0 began=$SECONDS left; shift 2
    left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt 30 ]; then
        say "$name: skipped, the budget of $BUDGET s is spent"; echo "$name|skipped|0" >> "$STEPS"; return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    say "$name: start (at most $limit s)"
    timeout "$limit" "$@" 2>&1 | tee -a "$OUT_DIR/$name.log" || status=$?
    echo "$name|$status|$((SECONDS - began))" >> "$STEPS"
    say "$name: exit status $status after $((SECONDS - began)) s"
}

if ! $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    say "no CUDA device visible to $PY: nothing to check"; exit 1
fi
if ! $PY -c "import fastapi, uvicorn, httptools, pydantic_settings, httpx_sse" 2>/dev/null; then
    if [ -n "$WHEELS" ]; then
        SITE="$OUT_DIR/site"
        $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$WHEELS"/*.whl \
            && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH" \
            || say "could not install the wheels in $WHEELS"
    else
        say "the web dependencies are missing and no --wheels folder was given: server steps will fail"
    fi
fi
# charlm itself, for its console script and subcommands (they need an installed distribution).
SITE="${SITE:-$OUT_DIR/site}"
$PY -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade --target "$SITE" . \
    && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" \
    || say "could not install charlm from this tree: 'charlm serve' steps will fail"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT_DIR/card.txt" 2>&1
say "card: $(cat "$OUT_DIR/card.txt"); torch $($PY -c 'import torch; print(torch.__version__)')"

step gpu-tests 150 $PY -m pytest -q -p no:cacheprovider -m gpu tests/gpu
step engine 240 $PY bench/engine.py --device cuda --dtypes bfloat16 float32 --batches 1 32 256 \
    --models models/shakespeare-gpt models/shakespeare-lstm models/pushkin-lstm-attention random:gpt-baby \
    --results "$RESULTS"
step engine-mingru 90 $PY bench/engine.py --device cuda --dtypes bfloat16 --batches 256 1024 --no-naive \
    --models models/shakespeare-mingru models/shakespeare-gpt --results "$RESULTS"
step engine-eager 60 $PY bench/engine.py --device cuda --dtypes bfloat16 --batches 1 256 --no-graphs --no-naive \
    --models models/shakespeare-gpt --results "$OUT_DIR/eager.jsonl"
step serve 100 $PY bench/serve.py --device cuda --levels 1 32 256 --procs 8 --plot "$OUT_DIR/serve.png" \
    --results "$RESULTS"
step serve-thread 60 $PY bench/serve.py --device cuda --levels 256 --procs 8 --plot "$OUT_DIR/serve-thread.png" \
    --serve-flags "--engine-process false" --results "$OUT_DIR/serve-thread.jsonl"
step profile 120 $PY bench/gpu_profile.py --model random:gpt-baby --batch 256 --compile
step train-throughput 45 $PY bench/train_throughput.py --presets gpt-baby --device cuda --iters 30 \
    --data "$DATA" --results "$RESULTS"
step train-throughput-compiled 120 $PY bench/train_throughput.py --presets gpt-baby --device cuda --iters 30 \
    --data "$DATA" --compile --results "$RESULTS"
step train-throughput-mingru 45 $PY bench/train_throughput.py --device cuda --iters 30 --data "$DATA" \
    --presets mingru gpt-small:block_size=128,batch_size=32 --results "$RESULTS"
# shakespeare-gpt's schedule (lr 2e-3, warmup 200, cosine over 8,500) up to its best iteration, 5,500.
step train-mingru 120 $PY -m charlm train --data "$DATA" --out "$OUT_DIR/shakespeare-mingru-gpu" --overwrite \
    --device cuda --preset mingru --set max_iters=5500 --set lr_decay_iters=8500 --set warmup_iters=200 \
    --set eval_interval=500 --set eval_iters=50 --no-progress
$PY bench/gpu_report.py --out "$OUT_DIR" --doc docs/benchmarks-gpu.md && say "wrote docs/benchmarks-gpu.md"
say "done"
