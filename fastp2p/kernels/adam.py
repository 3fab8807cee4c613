"""Adam in one Triton launch per parameter group that also writes the forward's low-precision weight copies.

torch's fused Adam steps the parameters, and --step_cast's copies are then rewritten by a second multi-tensor kernel
that reads every conv weight again. Here one pass per element reads the fp32 parameter, its gradient and both
moments, writes the parameter and the moments, and writes the parameter's bf16/fp16 copy from the value it has in
registers (parameters without a copy, such as norm weights, are stepped alone).

Multi-tensor, through a table of addresses: each row holds the addresses of one parameter's tensors (parameter,
gradient, moments, copy, step count) and its size, and each program steps one block of one row (without a mask but
for a row's last block, and 16 bytes per access where every address allows, as a contiguous kernel would). The
tensors stay where torch keeps them, so the optimizer is a torch.optim.Adam whose state is the reference's:
``state_dict`` has its keys and per-parameter tensors, ``load_state_dict`` and checkpoints work unchanged, DDP's
bucket-view gradients and parameters replaced by a resume are read where they are. Flat buffers with the parameters
as views would need no table, but a view's torch.save writes its whole buffer, and autograd (a new gradient each
step unless zeroed in place, a kernel per parameter), DDP and ``load_state_dict`` each put new tensors in place of
views. The table is rebuilt whenever an address changes (new gradients, a loaded state), which the caching allocator
makes rare in eager runs; a CUDA graph records the table's upload with the step, and the optimizer keeps the tables
it reads.

The math is torch.optim.Adam's without weight decay or amsgrad (the reference's use), as its foreach and
single-tensor paths compute it: the first moment by torch's lerp, the second by mul then addcmul, the bias
corrections in double precision from the step count, then ``p + (-lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)``.
The step counts are device tensors, as capturable Adam keeps them: every program reads a row's count before the
increment, and the last program to finish (an atomic ticket) increments them all, so the step is one launch and
can be captured; the learning rate is read from the device too (the group's tensor under CUDA graphs).
Optionally the moments are kept in bf16 (``moment_dtype``), halving their traffic.
"""

import math
import struct

import torch
import triton
import triton.language as tl

from .launch import cdiv, grid, sized_for_gpu, tickets

# the int64 columns of a table row, in the order TritonAdam.build_table writes them
PARAM, GRAD, EXP_AVG, EXP_AVG_SQ, COPY, STEP, NUMEL, FIRST_BLOCK = (tl.constexpr(column) for column in range(8))
ROW = tl.constexpr(8)
TRITON_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def block_size(device):
    """Elements per program: a few per thread on a GPU; more in the interpreter, whose cost is mostly per program
    (but every program of a launch, a bias's too, works on arrays of this size)."""
    return 1024 if sized_for_gpu(device) else 16384


def split_double(x):
    """x as two fp32 kernel arguments whose sum in fp64 is x to ~48 bits (a Python float argument is fp32)."""
    high = struct.unpack("f", struct.pack("f", x))[0]
    return high, x - high


@triton.jit
def _rounded(x, DTYPE: tl.constexpr):
    """fp32 x in DTYPE, rounded to nearest even as torch rounds it; bf16 through its bits, since Triton's
    interpreter truncates a cast to bf16 (the tests then compare with torch's cast exactly)."""
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        return tl.where(x == x, rounded, x.to(tl.bfloat16))  # NaN stays NaN
    else:
        return x.to(DTYPE)


@triton.jit
def _pointer(row, column, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """The address in a table row's column as a pointer; ALIGNED (every address in the table is a multiple of 16
    bytes) lets the compiler move 16 bytes per load and store."""
    pointer = tl.load(row + column).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        pointer = tl.multiple_of(pointer, 16)
    return pointer


@triton.jit
def _step_elements(row, offs, numel, step_size, bias_correction2_sqrt, lerp_weight, beta2, one_minus_beta2, eps,
                   MOMENT_DTYPE: tl.constexpr, COPY_DTYPE: tl.constexpr, ALIGNED: tl.constexpr,
                   MASKED: tl.constexpr):
    """Adam on the elements ``offs`` of a row's tensors; MASKED for a row's last, partial block only (a mask of
    unknown extent keeps the compiler from vectorizing the loads of a full block)."""
    mask = None
    if MASKED:
        mask = offs < numel
    param_ptr = _pointer(row, PARAM, tl.float32, ALIGNED)
    grad_ptr = _pointer(row, GRAD, tl.float32, ALIGNED)
    exp_avg_ptr = _pointer(row, EXP_AVG, MOMENT_DTYPE, ALIGNED)
    exp_avg_sq_ptr = _pointer(row, EXP_AVG_SQ, MOMENT_DTYPE, ALIGNED)
    param = tl.load(param_ptr + offs, mask=mask)
    grad = tl.load(grad_ptr + offs, mask=mask)
    exp_avg = tl.load(exp_avg_ptr + offs, mask=mask).to(tl.float32)
    exp_avg_sq = tl.load(exp_avg_sq_ptr + offs, mask=mask).to(tl.float32)
    if lerp_weight < 0.5:  # torch's lerp, exact at both ends
        exp_avg = exp_avg + lerp_weight * (grad - exp_avg)
    else:
        exp_avg = grad - (grad - exp_avg) * (1.0 - lerp_weight)
    exp_avg_sq = exp_avg_sq * beta2 + one_minus_beta2 * grad * grad
    # IEEE square root and divisions, as torch computes them (Triton's defaults are approximate on a GPU)
    denom = tl.div_rn(tl.sqrt_rn(exp_avg_sq), bias_correction2_sqrt) + eps
    param = param + tl.div_rn(-step_size * exp_avg, denom)
    tl.store(param_ptr + offs, param, mask=mask)
    tl.store(exp_avg_ptr + offs, _rounded(exp_avg, MOMENT_DTYPE), mask=mask)
    tl.store(exp_avg_sq_ptr + offs, _rounded(exp_avg_sq, MOMENT_DTYPE), mask=mask)
    if tl.load(row + COPY) != 0:
        tl.store(_pointer(row, COPY, COPY_DTYPE, ALIGNED) + offs, _rounded(param, COPY_DTYPE), mask=mask)


@triton.jit
def adam_kernel(
    table_ptr,  # [rows, ROW] int64: addresses of each parameter's tensors, its numel and its first block
    block_rows_ptr,  # [programs] int32: the row each program steps a block of
    lr_ptr,  # [] the group's learning rate (fp32 tensor under CUDA graphs, else fp64)
    tickets_ptr,  # [1] int32, 0 between launches: programs finished so far
    num_rows,
    lerp_weight, beta2, one_minus_beta2, eps,  # fp32, as torch casts them for the elementwise ops
    log2_beta1_high, log2_beta1_low, log2_beta2_high, log2_beta2_low,  # see split_double
    MOMENT_DTYPE: tl.constexpr, COPY_DTYPE: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
):
    pid = tl.program_id(0)
    row = table_ptr + tl.load(block_rows_ptr + pid).to(tl.int64) * ROW
    start = (pid - tl.load(row + FIRST_BLOCK)) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    numel = tl.load(row + NUMEL)
    step = tl.load(tl.load(row + STEP).to(tl.pointer_type(tl.float32))).to(tl.float64) + 1.0

    # bias corrections in double precision as the reference's Python computes them (beta ** step as
    # 2 ** (step * log2(beta))), rounded to fp32 where torch casts its scalars
    beta1_power = tl.exp2(step * (tl.cast(log2_beta1_high, tl.float64) + tl.cast(log2_beta1_low, tl.float64)))
    beta2_power = tl.exp2(step * (tl.cast(log2_beta2_high, tl.float64) + tl.cast(log2_beta2_low, tl.float64)))
    step_size = (tl.load(lr_ptr).to(tl.float64) / (1.0 - beta1_power)).to(tl.float32)
    bias_correction2_sqrt = tl.sqrt(1.0 - beta2_power).to(tl.float32)
    if start + BLOCK <= numel:
        _step_elements(row, offs, numel, step_size, bias_correction2_sqrt, lerp_weight, beta2, one_minus_beta2, eps,
                       MOMENT_DTYPE, COPY_DTYPE, ALIGNED, MASKED=False)
    else:
        _step_elements(row, offs, numel, step_size, bias_correction2_sqrt, lerp_weight, beta2, one_minus_beta2, eps,
                       MOMENT_DTYPE, COPY_DTYPE, ALIGNED, MASKED=True)

    # The last program to take a ticket (acq_rel: every other program has read its step count by then) increments
    # every row's count and resets the tickets for the next launch.
    if tl.atomic_add(tickets_ptr, 1) == tl.num_programs(0) - 1:
        for first_row in range(0, num_rows, BLOCK_ROWS):
            rows = first_row + tl.arange(0, BLOCK_ROWS)
            in_table = rows < num_rows
            step_ptrs = tl.load(table_ptr + rows.to(tl.int64) * ROW + STEP, mask=in_table, other=0).to(
                tl.pointer_type(tl.float32))
            tl.store(step_ptrs, tl.load(step_ptrs, mask=in_table) + 1.0, mask=in_table)
        tl.store(tickets_ptr, 0)


def same_layout(tensor, parameter):
    return tensor.shape == parameter.shape and tensor.stride() == parameter.stride()


def in_layout_of(parameter, tensor, dtype):
    """``tensor`` as ``dtype`` in ``parameter``'s strides (the kernel walks all of a row's tensors in one order)."""
    if tensor.dtype == dtype and tensor.device == parameter.device and same_layout(tensor, parameter):
        return tensor
    return torch.empty_like(parameter, dtype=dtype).copy_(tensor)


class TritonAdam(torch.optim.Adam):
    """torch.optim.Adam (no weight decay, no amsgrad) stepped by adam_kernel, one launch per parameter group,
    which also writes the low-precision copies handed to ``write_copies``. Capturable: step counts and, when the
    group's learning rate is a tensor, the learning rate are read on the device."""

    def __init__(self, params, lr, betas, eps=1e-8, moment_dtype=torch.float32):
        super().__init__(params, lr=lr, betas=betas, eps=eps, capturable=True)
        self.moment_dtype = moment_dtype
        self.copy_of = {}  # parameter -> the low-precision copy the step writes
        self.copy_dtype = torch.bfloat16
        self.tables = {}  # group index -> (addresses, device table, device block rows, block count)
        self.graph_tables = []  # the tables, on the host and the device, that captured CUDA graphs read
        self.spare_pinned = {}  # (dtype, numel) -> pinned host memory, for a table uploaded during capture
        self.lr_on_device = {}  # group index -> (lr, fp64 device tensor) for a group whose lr is a float
        self.register_load_state_dict_post_hook(lambda optimizer: optimizer.conform_state())

    def write_copies(self, parameters, copies):
        """Have each step also write ``copies`` (one dtype, in their parameters' layouts) from ``parameters``."""
        for parameter, copy in zip(parameters, copies):
            if not same_layout(copy, parameter) or copy.device != parameter.device:
                raise ValueError("a copy written by the Adam kernel needs its parameter's shape, strides and device")
            if self.copy_of and copy.dtype != self.copy_dtype:
                raise ValueError(f"copies in {copy.dtype} and {self.copy_dtype}: the Adam kernel writes one dtype")
            self.copy_dtype = copy.dtype
            self.copy_of[parameter] = copy

    def conform_state(self):
        """After load_state_dict (which casts moments to the parameter's dtype and keeps the saved strides): the
        moments in ``moment_dtype`` and each parameter's strides, as the kernel reads them."""
        for parameter, state in self.state.items():
            for name in ("exp_avg", "exp_avg_sq"):
                if name in state:
                    state[name] = in_layout_of(parameter, state[name], self.moment_dtype)

    def state_of(self, parameter):
        state = self.state[parameter]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=parameter.device)
            for name in ("exp_avg", "exp_avg_sq"):
                state[name] = torch.zeros_like(parameter, dtype=self.moment_dtype, memory_format=torch.preserve_format)
        return state

    def lr_pointer(self, index, group):
        """The group's learning rate as a device tensor: its own under CUDA graphs, else an fp64 one kept equal."""
        lr = group["lr"]
        if torch.is_tensor(lr):
            return lr
        kept = self.lr_on_device.get(index)
        if kept is None:
            device = group["params"][0].device
            kept = self.lr_on_device[index] = [lr, torch.tensor(lr, dtype=torch.float64, device=device)]
        elif kept[0] != lr:
            kept[0] = lr
            kept[1].fill_(lr)  # in place: a captured step reads this tensor
        return kept[1]

    def upload(self, values, dtype, device):
        """``values`` as a tensor on ``device``, copied without a host sync from pinned memory (a copy a CUDA graph
        can capture: it reads that host memory again at every replay).

        Pinned memory is not allocated while a graph is captured (the allocator queries CUDA events to reuse its
        blocks, which capture forbids in some torch versions): each eager upload also pins a spare buffer of its
        size, which a capture, rebuilding the table for the gradients it allocates, fills and keeps."""
        host = torch.tensor(values, dtype=dtype)
        if device.type != "cuda":
            return host
        size = (dtype, host.numel())
        if torch.cuda.is_current_stream_capturing():
            pinned = self.spare_pinned.pop(size, None)
            if pinned is None:
                raise RuntimeError("the Adam kernel's table changed size during CUDA graph capture: run an eager step "
                                   "with the same parameters first")
            pinned.copy_(host)
            self.graph_tables.append(pinned)  # the graph copies this host memory to the device at every replay
        else:
            pinned = host.pin_memory()
            if size not in self.spare_pinned:
                self.spare_pinned[size] = torch.empty(host.numel(), dtype=dtype, pin_memory=True)
        return pinned.to(device, non_blocking=True)

    def table(self, index, rows, device):
        """(table, block rows, block count, whether every address is a multiple of 16 bytes) for ``rows``
        (parameter, gradient, moments, copy, step), built and uploaded again only when an address has changed."""
        addresses = [tensor.data_ptr() if tensor is not None else 0 for row in rows for tensor in row]
        cached = self.tables.get(index)
        if cached is None or cached[0] != addresses:
            aligned = all(address % 16 == 0 for address in addresses)
            cached = self.tables[index] = (addresses, *self.build_table(rows, device), aligned)
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            self.graph_tables.append(cached[1:3])  # what the graph reads at every replay, whatever comes after
        return cached[1:]

    def build_table(self, rows, device):
        block = block_size(device)
        table, block_rows = [], []
        for row_index, (parameter, grad, exp_avg, exp_avg_sq, copy, step) in enumerate(rows):
            self.check_row(parameter, grad, exp_avg, exp_avg_sq)
            blocks = cdiv(parameter.numel(), block)
            table += [parameter.data_ptr(), grad.data_ptr(), exp_avg.data_ptr(), exp_avg_sq.data_ptr(),
                      copy.data_ptr() if copy is not None else 0, step.data_ptr(), parameter.numel(), len(block_rows)]
            block_rows += [row_index] * blocks
        return self.upload(table, torch.int64, device), self.upload(block_rows, torch.int32, device), len(block_rows)

    def check_row(self, parameter, grad, exp_avg, exp_avg_sq):
        if parameter.dtype != torch.float32 or grad.dtype != torch.float32 or grad.is_sparse:
            raise TypeError("the Adam kernel steps fp32 parameters with dense fp32 gradients")
        dense = parameter.is_contiguous() or parameter.is_contiguous(memory_format=torch.channels_last)
        if not dense or not all(same_layout(t, parameter) for t in (grad, exp_avg, exp_avg_sq)):
            raise ValueError(f"the Adam kernel walks a dense (contiguous or channels-last) parameter and its gradient "
                             f"and moments in one memory order, but they have strides {parameter.stride()}, "
                             f"{grad.stride()}, {exp_avg.stride()} and {exp_avg_sq.stride()}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            if group["weight_decay"] or group["amsgrad"] or group["maximize"]:
                raise ValueError("the Adam kernel has no weight decay, amsgrad or maximize (the reference uses none)")
            rows = []
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                state = self.state_of(parameter)
                rows.append((parameter, parameter.grad, state["exp_avg"], state["exp_avg_sq"],
                             self.copy_of.get(parameter), state["step"]))
            if rows:
                self.launch(index, group, rows)
        return loss

    def launch(self, index, group, rows):
        device = rows[0][0].device
        table, block_rows, blocks, aligned = self.table(index, rows, device)
        beta1, beta2 = group["betas"]
        adam_kernel[grid(blocks)](
            table, block_rows, self.lr_pointer(index, group), tickets(device, 1), len(rows),
            1 - beta1, beta2, 1 - beta2, group["eps"], *split_double(math.log2(beta1)), *split_double(math.log2(beta2)),
            MOMENT_DTYPE=TRITON_DTYPES[self.moment_dtype], COPY_DTYPE=TRITON_DTYPES[self.copy_dtype], ALIGNED=aligned,
            BLOCK=block_size(device), BLOCK_ROWS=128)
