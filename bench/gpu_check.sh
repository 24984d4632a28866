#!/usr/bin/env bash
# One command that proves the GPU path on a CUDA machine, in order of what matters (steps that no
# longer fit the budget, 8 minutes by default, are skipped and reported; CHARLM_GPU_CHECK_BUDGET_S
# sets it): bench/serve.py at 1/256/1,024 streams with one HTTP front end and with four, each beside
# the same engine in-process, and shakespeare-lstm at 1,024 streams; the decode step's targets as
# before (step as written, SDPA) and as served (bench/engine.py: compiled step, attention chosen at
# startup, dtype auto for the LSTM); the gpu-marked test of batch invariance as served;
# shakespeare-mingru against shakespeare-gpt at batch 256 and 1,024; the engine at batch 256 with
# every row under a grammar against none, and scoring 10,000 characters (bench/constrained.py);
# kernels and kernel time per step of every bundled model (bench/gpu_profile.py); the gpu-marked
# tests of the Triton kernel, compiled steps and dtype auto, then the others; the engine of every
# bundled model in bf16 and fp32 at batch 1/32/256 (not compiled: the dtype table); the CPU engine;
# training throughput (gpt-baby; the mingru preset against the gpt of its size); last, the mingru
# recipe trained on shakespeare-gpt's schedule; then docs/benchmarks-gpu.md (bench/gpu_report.py).
#
#   bench/gpu_check.sh [--wheels DIR] [--data FILE] [--out DIR] [--dry-run]
#
# --wheels: a folder of wheels to install what this Python lacks (the GPU machines have CUDA torch
# but not the web stack). --data: the training text (default ../shared/data/tinyshakespeare.txt;
# without it the training benchmark uses a generated text of the same alphabet). --out: where logs, results and the trained model go
# (default /tmp/charlm-gpu-check). Every step is bounded in time; a step that fails or cannot run
# is reported and the others go on. Results are written as they are measured. --dry-run: every step
# on the CPU at tiny sizes with short limits, and the report into the --out folder (docs untouched):
# it checks this script and what it runs without a GPU, and measures nothing worth reading.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS="" DATA="../shared/data/tinyshakespeare.txt" OUT_DIR="/tmp/charlm-gpu-check" DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS="$2"; shift 2 ;;
        --data) DATA="$2"; shift 2 ;;
        --out) OUT_DIR="$2"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        *) echo "usage: $0 [--wheels DIR] [--data FILE] [--out DIR] [--dry-run]" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/results.jsonl" STEPS="$OUT_DIR/steps.txt"
: > "$RESULTS"; : > "$STEPS"
START=$SECONDS
say() { echo "gpu-check [$((SECONDS - START)) s]: $*" >&2; }
BUDGET=${CHARLM_GPU_CHECK_BUDGET_S:-445}  # seconds for all the steps: 8 minutes with setup and report
step() {  # step NAME TIMEOUT COMMAND...: run it bounded (and within the budget), record how it ended
    local name=$1 limit=$2 status=0 began=$SECONDS left; shift 2
    left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt 30 ]; then
        say "$name: skipped, the budget of $BUDGET s is spent"; echo "$name|skipped|0" >> "$STEPS"; return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    [ "$DRY" = 1 ] && limit=$((limit < 120 ? limit : 120))
    say "$name: start (at most $limit s)"
    timeout "$limit" "$@" 2>&1 | tee -a "$OUT_DIR/$name.log" || status=$?
    echo "$name|$status|$((SECONDS - began))" >> "$STEPS"
    say "$name: exit status $status after $((SECONDS - began)) s"
}

if [ "$DRY" = 1 ]; then  # tiny sizes on the CPU: the same commands, checked, nothing measured
    DEV=cpu B1=1 B32=2 B256=2 B1024=3 CHARS=12 ITERS=2 PROFILE_BUDGET=20 PROFILE_STEPS=2 HALF=float32
    DOC="$OUT_DIR/benchmarks-gpu.md"
    export CHARLM_COMPILE=false
elif ! $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    say "no CUDA device visible to $PY: nothing to check (--dry-run checks the script on a CPU)"; exit 1
else
    DEV=cuda B1=1 B32=32 B256=256 B1024=1024 CHARS=300 ITERS=30 PROFILE_BUDGET=140 PROFILE_STEPS=100 HALF=bfloat16
    DOC=docs/benchmarks-gpu.md
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
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT_DIR/card.txt" 2>&1 \
    || echo "no GPU (a dry run on the CPU)" > "$OUT_DIR/card.txt"
say "card: $(cat "$OUT_DIR/card.txt"); torch $($PY -c 'import torch; print(torch.__version__)')"

ENGINE="$PY bench/engine.py --device $DEV --chars $CHARS --no-naive --no-step-alone"
BABY=random:gpt-baby GPT=models/shakespeare-gpt LSTM=models/shakespeare-lstm
# First the HTTP side (issue "streams at GPU scale"), engines in processes, beside the same engine
# in-process (--engine-baseline): one front end, then four; the fastest bundled model at 1,024
# streams. The step as written and bf16: compiling and timing dtypes at startup would take the
# step's time (the first run measured 42 s of compiling per step variant).
SERVE="env CHARLM_COMPILE=false CHARLM_DTYPE=$HALF $PY bench/serve.py --device $DEV --procs 8 --engine-baseline \
    --results $RESULTS"
step serve 90 $SERVE --levels $B1 $B256 $B1024 --workers 1 --plot "$OUT_DIR/serve.png"
step serve-workers 70 $SERVE --levels $B256 $B1024 --workers 4 --plot "$OUT_DIR/serve-workers.png"
step serve-lstm 50 $SERVE --model shakespeare-lstm --levels $B1024 --workers 4 --plot "$OUT_DIR/serve-lstm.png"
# The decode step's targets: the same shapes as before (step as written, SDPA), then as served
# (compiled: about 42 s per step variant and batch size, so these steps are long).
step baseline 60 bash -c "$ENGINE --no-compile --attention sdpa --models $BABY $GPT --dtypes $HALF \
    --batches $B1 $B256 $B1024 --results $OUT_DIR/baseline.jsonl && $ENGINE --no-compile --models $LSTM \
    --dtypes $HALF float32 --batches $B256 --results $OUT_DIR/baseline.jsonl"
step targets-gpt 200 $ENGINE --models $GPT --dtypes $HALF --batches $B1 $B256 --results "$RESULTS"
step targets-lstm 100 $ENGINE --models $LSTM --dtypes auto --batches $B256 --results "$RESULTS"
step targets-gpt-baby 200 $ENGINE --models $BABY --dtypes $HALF --batches $B256 $B1024 --results "$RESULTS"
if [ "$DRY" = 1 ]; then
    step gpu-tests 60 $PY -m pytest -q -p no:cacheprovider -m gpu --collect-only tests/gpu
else  # the test behind the invariance target, with a report of its own (a step cut short writes none)
    step gpu-tests-invariance 200 $PY -m pytest -q -p no:cacheprovider -m gpu tests/gpu -k alone_equals \
        --junitxml "$OUT_DIR/gpu-tests.xml"
fi
step engine-mingru 90 $ENGINE --models models/shakespeare-mingru $GPT --dtypes $HALF --batches $B256 $B1024 \
    --results "$RESULTS"
step constrained 60 $PY bench/constrained.py --device $DEV --only throughput scoring --batch $B256 --chars 200 \
    --rounds 2 --results "$OUT_DIR/constrained.jsonl"
step profile $((PROFILE_BUDGET + 40)) $PY bench/gpu_profile.py --device $DEV --batch $B256 --budget-s $PROFILE_BUDGET \
    --steps $PROFILE_STEPS --results "$OUT_DIR/profile.jsonl" --dtype $HALF \
    $([ "$DRY" = 1 ] && echo --models $GPT $LSTM)
KERNEL_TESTS="triton_kernel or compiled_step or dtype_auto"
[ "$DRY" = 1 ] || step gpu-tests-kernel 90 $PY -m pytest -q -p no:cacheprovider -m gpu tests/gpu -k "$KERNEL_TESTS"
[ "$DRY" = 1 ] || step gpu-tests 90 $PY -m pytest -q -p no:cacheprovider -m gpu tests/gpu \
    -k "not ($KERNEL_TESTS or alone_equals)"
step engine 100 $ENGINE --no-compile --dtypes $HALF float32 --batches $B1 $B32 $B256 --results "$OUT_DIR/engine.jsonl" \
    --models $GPT $LSTM models/pushkin-lstm-attention models/shakespeare-gpt-large
step cpu-engine 40 $PY bench/engine.py --device cpu --chars 100 --no-naive --no-step-alone --models $GPT --batches 1 32 \
    --results "$OUT_DIR/cpu.jsonl"
step train-throughput 45 $PY bench/train_throughput.py --presets gpt-baby --device $DEV --iters $ITERS \
    --data "$DATA" --results "$RESULTS"
step train-throughput-mingru 45 $PY bench/train_throughput.py --device $DEV --iters $ITERS --data "$DATA" \
    --presets mingru gpt-small:block_size=128,batch_size=32 --results "$RESULTS"
# shakespeare-gpt's schedule (lr 2e-3, warmup 200, cosine over 8,500) up to its best iteration, 5,500.
[ "$DRY" = 1 ] || step train-mingru 120 $PY -m charlm train --data "$DATA" --out "$OUT_DIR/shakespeare-mingru-gpu" \
    --overwrite --device $DEV --preset mingru --set max_iters=5500 --set lr_decay_iters=8500 --set warmup_iters=200 \
    --set eval_interval=500 --set eval_iters=50 --no-progress
$PY bench/gpu_report.py --out "$OUT_DIR" --doc "$DOC" && say "wrote $DOC"
say "done"
