#!/usr/bin/env bash
# What a session lent a GPU runs, in two device calls that each fit a 10-minute limit on an H100 (a lent
# session has about 15 minutes of device time, machine start included), most important first:
#
#   bash benchmarks/gpu_session.sh check     # ~8 min: CUDA kernel and engine tests, then the goal rows
#   bash benchmarks/gpu_session.sh measure   # ~8 min: every bench_train row, profiles, kernel microbenchmarks
#
# Each stage has its own time limit, so one that hangs or runs long costs only its share; logs and results go
# to $OUT (the device tool's folder; default benchmarks/results/gpu_session) with a summary line per stage.
# Set FASTP2P_COMMIT to the commit of the tree (a copy without .git records none otherwise). The loader rows
# read the facades sets from bench_data/ (carry it along; without it bench_train skips them).
set -u
phase=${1:?usage: gpu_session.sh check|measure}
out=${OUT:-benchmarks/results/gpu_session}
python=${PYTHON:-python3}
mkdir -p "$out"
data=()
[ -d bench_data/facades ] && data=(--dataroot bench_data/facades --unaligned_root bench_data/facades_unpaired)

stage() {  # stage NAME SECONDS COMMAND...: run COMMAND under a time limit, its output in NAME.log
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "$name: exit $? after $((SECONDS - start)) s (limit $limit s)" | tee -a "$out/summary.txt"
}

$python -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 || {
    echo "install failed, see install.log" | tee -a "$out/summary.txt"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/gpu.txt" 2>&1

case $phase in
check)
    stage kernel_tests 200 $python -m pytest -v --durations=15 -p no:cacheprovider tests/kernels
    # without the --compile parity tests: inductor's cold compile would take most of the stage (they run on the
    # CPU in CI; on a GPU, bench_train.py's compile rows run it as far as their time budget goes)
    stage engine_tests 150 $python -m pytest -v --durations=15 -p no:cacheprovider tests/test_engine.py \
        -k "not compiled"
    # the goals: the reference row and the default fast path (all rows before it included)
    stage train_goals 150 $python benchmarks/bench_train.py --out "$out/goals" --rows reference cuda_graph \
        --budget_s 120 "${data[@]}"
    ;;
measure)
    stage train_chain 270 $python benchmarks/bench_train.py --out "$out/chain" --budget_s 230 --no_loader
    stage profile 90 $python benchmarks/profile_step.py --out "$out/profile" \
        --config cycle_gan:1:batch_passes pix2pix:1:foreach_cast pix2pix:16:foreach_cast
    stage kernels 120 $python benchmarks/bench_kernels.py --graph --batches 1 16 --dtypes bfloat16 \
        --out "$out/kernels"
    ;;
*)
    echo "unknown phase $phase (check or measure)"; exit 2 ;;
esac
