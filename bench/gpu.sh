#!/usr/bin/env bash
# The GPU checks in one go, for a lent CUDA machine: the CUDA tests, then bench/ on the GPU.
#     OUT=folder bash bench/gpu.sh        (each stage has its own time limit; a stage's failure stops no other)
# Packages the machine lacks can come as wheels in .whl/ (see bench/RESULTS.md, "GPU").
set -u
OUT=${OUT:-bench-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
log="$OUT/bench.log"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch, opacus, sys; print(sys.version.split()[0], torch.__version__, opacus.__version__)"
    nproc
} >"$OUT/machine.txt" 2>&1
stage() {  # stage SECONDS NAME COMMAND...: run with a limit, its stdout to $OUT/NAME, stderr to the log
    local limit=$1 name=$2
    shift 2
    echo "== $name: $* ($(date +%T))" >>"$log"
    timeout "$limit" "$@" >"$OUT/$name" 2>>"$log"
    echo "== $name: exit $? ($(date +%T))" >>"$log"
}
# GroupNorm(bias=False) needs torch ≥ 2.12 (we pin 2.13; a GPU image may hold an older one)
nobias=()
python3 -c "import torch; torch.nn.GroupNorm(2, 4, bias=False)" 2>/dev/null ||
    nobias=(--deselect "tests/test_clipping.py::test_each_layer_clipped_sum_equals_the_hooks[group norm without bias]")
stage 150 tests.log python3 -m pytest -q -p no:cacheprovider -n 8 "${nobias[@]}" tests/test_gpu.py \
    tests/test_clipping.py tests/test_steps.py tests/test_landscape.py tests/test_hessian.py tests/test_training.py \
    tests/test_sweeps.py
# one JSON line each: fast clipping, Opacus's hooks, then fast clipping on batches of 1,024 (less launch-bound)
stage 150 step_cost.json bash -c "python3 bench/step_cost.py --json && python3 bench/step_cost.py --json \
    --clipping hooks && python3 bench/step_cost.py --json --batch-size 1024"
stage 80 landscape.json python3 bench/sharpness.py --json --landscape-only --repeats 5
stage 120 hessian.json python3 bench/sharpness.py --json --hessian-only --repeats 5
stage 120 accounting.json python3 bench/accounting_share.py --json
tail -5 "$OUT/tests.log"
grep "^==" "$log"
