"""Compile every Triton kernel specialization fastp2p launches to an sm_90 cubin, without a GPU.

Triton's interpreter, which runs the kernel tests on a CPU, accepts code that the compiler rejects (it runs the
Python, it does not type it). This script runs the real compiler (Python AST -> TTIR -> TTGIR -> LLVM -> PTX ->
ptxas, all bundled with Triton) for an H100 target, so such errors show up in CI. It must run without
TRITON_INTERPRET, hence a separate process: ``python tests/kernels/compile_for_gpu.py [--jobs N] [--only TEXT]``.

Each compile runs on one core (the MLIR passes in Python's process, then ptxas, most of a conv kernel's time), so
the specializations are shared among --jobs worker processes (default: one per core, at most 8), the slowest first.
"""

import argparse
import concurrent.futures
import functools
import multiprocessing
import os
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("run without TRITON_INTERPRET=1: the interpreter's kernels cannot be compiled")

from fastp2p.kernels import adam, conv, losses, norm_act, pad  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
FLOAT_SCALARS = {"eps", "momentum", "negative_slope", "dropout_p", "target", "inv_numel", "lerp_weight", "beta2",
                 "one_minus_beta2", "log2_beta1_high", "log2_beta1_low", "log2_beta2_high", "log2_beta2_low"}
NORM_DATA = {"x_ptr", "y_ptr", "dy_ptr", "dx_ptr"}  # the other pointers are fp32 statistics and affine parameters
CONV_DATA = {"x_ptr", "y_ptr", "a_ptr", "b_ptr"}  # the rest: fp32 weights, statistics, norm affine, partials
CONV_KERNELS = (conv.conv_kernel, conv.conv_wgrad_kernel)


def signature(fn, data_type, constexprs):
    """Triton types by argument name: tensors of the layer's dtype, fp32 statistics, int64 seed, batch count and
    Adam's address table, int32 tickets, Adam's block rows and sizes."""
    data = {"a_ptr", "b_ptr", "grad_ptr"} if fn is losses.loss_kernel else NORM_DATA
    data = CONV_DATA if fn in CONV_KERNELS else data
    types = {}
    for name in fn.arg_names:
        if name in constexprs:
            types[name] = "constexpr"
        elif name in ("seed_ptr", "batches_ptr", "table_ptr"):
            types[name] = "*i64"
        elif name in ("tickets_ptr", "block_rows_ptr"):
            types[name] = "*i32"
        elif name.endswith("_ptr"):
            types[name] = "*" + (data_type if name in data else "fp32")
        else:
            types[name] = "fp32" if name in FLOAT_SCALARS else "i32"
    return types


def compile_kernel(fn, data_type, constexprs):
    source = ASTSource(fn=fn, signature=signature(fn, data_type, constexprs),
                       constexprs={(fn.arg_names.index(name),): value for name, value in constexprs.items()})
    return triton.compile(source, target=TARGET)


def specializations():
    """(kernel, constexprs) covering both sides of every constexpr branch (flags all off, all on)."""
    flags = [dict(HAS_AFFINE=on, HAS_ACT=on, HAS_DROPOUT=on, PAD=on) for on in (False, True)]
    tile = dict(BLOCK_HW=32, BLOCK_C=64)
    for update in (False, True):
        yield norm_act.stats_partial_kernel, dict(UPDATE_RUNNING=update, BLOCK_R=64, **tile)
    for flag in flags:
        on = flag["PAD"]
        forward = dict(**flag, RESIDUAL=on, WRITE_Y=on, RELU_OUT=on, **tile)
        backward = dict(**flag, HAS_DY=on, RELU_OUT=on, **tile)
        for update in (False, True):
            yield norm_act.forward_group_kernel, dict(UPDATE_RUNNING=update, **forward)
        yield norm_act.forward_apply_kernel, forward
        yield norm_act.backward_partial_kernel, dict(**backward, BLOCK_R=64)
        for batch_stats in (False, True):
            yield norm_act.backward_apply_kernel, dict(**backward, BATCH_STATS=batch_stats, RESIDUAL=on)
            for input_grad in (False, True):
                yield norm_act.backward_group_kernel, dict(**backward, BATCH_STATS=batch_stats, RESIDUAL=on,
                                                            INPUT_GRAD=input_grad)
    # the conv kernels (slow to compile: bf16 alone, see main): each flag on in one of two specializations, at the GPU
    # plan's largest tiles; the transposed one as an input gradient with the norm's backward sums
    for transposed, precision in ((False, "ieee"), (True, "tf32")):
        yield conv.conv_kernel, dict(TRANSPOSED=transposed, REFLECT=not transposed, PROLOGUE=not transposed,
                                      HAS_AFFINE=True, HAS_ACT=True, HAS_BIAS=not transposed, STATS=not transposed,
                                      UPDATE_RUNNING=not transposed, NORM_GRAD=transposed, PRECISION=precision,
                                      INDEX=tl.int32, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, BLOCK_T=64)
        yield conv.conv_wgrad_kernel, dict(REFLECT=not transposed, PROLOGUE_A=transposed, PROLOGUE_B=not transposed,
                                            HAS_AFFINE=True, HAS_ACT=True, SUM_PARTS=transposed, PRECISION=precision,
                                            INDEX=tl.int32, BLOCK_A=64, BLOCK_J=64, BLOCK_R=64)
    yield pad.pad_forward_kernel, dict(BLOCK_W=16, BLOCK_C=64)
    yield pad.pad_backward_kernel, dict(BLOCK_H=1, BLOCK_W=16, BLOCK_C=64)
    for mode in (*losses.GAN_MODES.values(), losses.L1_MODE):
        for write_grad in (False, True):
            yield losses.loss_kernel, dict(MODE=mode, WRITE_GRAD=write_grad, BLOCK=losses.BLOCK)
    for moments, copies, aligned in ((tl.float32, tl.bfloat16, True), (tl.bfloat16, tl.float16, False)):
        yield adam.adam_kernel, dict(MOMENT_DTYPE=moments, COPY_DTYPE=copies, ALIGNED=aligned, BLOCK=1024,
                                      BLOCK_ROWS=128)


def tasks():
    """(data type, index into specializations()) of every compile, the slowest first (the conv kernels, then the
    norm kernels with their flags on) so that no long compile is left to run alone at the end; one compile per
    distinct (kernel, signature, constexprs): the Adam kernel's signature takes no data type."""
    specs = list(specializations())
    seen, found = set(), []
    for data_type in ("fp32", "bf16"):
        for index, (fn, constexprs) in enumerate(specs):
            if data_type == "fp32" and fn in CONV_KERNELS:  # an fp32 'ieee' GEMM compiles for minutes on 2 cores
                continue
            key = (fn.__name__, repr(sorted(signature(fn, data_type, constexprs).items())), repr(constexprs))
            if key not in seen:
                seen.add(key)
                found.append((data_type, index))

    def cost(task):
        fn, constexprs = specs[task[1]]
        return (fn not in CONV_KERNELS, not any(value is True for value in constexprs.values()))

    return sorted(found, key=cost)  # a stable sort: the order above within each rank


@functools.cache
def specialization(index):
    return list(specializations())[index]


def describe(data_type, index):
    fn, constexprs = specialization(index)
    return f"{fn.__name__} {data_type} {constexprs}"


def compile_task(data_type, index):
    """In a worker: compile one specialization; None, or the error as text (a compiler's exception may not pickle)."""
    fn, constexprs = specialization(index)
    try:
        compile_kernel(fn, data_type, constexprs)
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


def default_jobs():
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=default_jobs(), help="worker processes (default: %(default)s)")
    parser.add_argument("--only", default="", metavar="TEXT",
                        help="compile only the specializations whose description holds TEXT (e.g. 'pad_forward')")
    args = parser.parse_args(argv)
    jobs = max(1, args.jobs)
    todo = [task for task in tasks() if args.only in describe(*task)]
    if not todo:
        sys.exit(f"no specialization matches --only {args.only!r}")
    failures = 0
    # spawned workers (not forked from this process, which has imported torch and Triton); leaving the with-block
    # waits for all of them to exit, also after an error
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(compile_task, *task): task for task in todo}
        for future in concurrent.futures.as_completed(futures):  # report every failing specialization, not the first
            task = futures[future]
            try:
                error = future.result()
            except Exception as crash:  # the worker died (e.g. a crash in the compiler): this and the pending ones
                error = f"worker process failed: {type(crash).__name__}: {crash}"
            if error is not None:
                failures += 1
                print(f"FAILED {describe(*task)}: {error}", flush=True)
    print(f"compiled {len(todo)} specializations for {TARGET} in {jobs} processes: {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
