"""Every fast path of the engine, in the order of the end-to-end benchmark's rows ("one technique added per row").

Each entry is the FastPath its module declares; the option parser, EngineConfig, the resolution, the order of the
engine's stages, the benchmark rows, the self-check and the tests' lists of switches are read from here.
"""

from fastp2p.engine.backends import CUDNN_SEARCH_ALL
from fastp2p.engine.communication import BUCKET_CAP_MB, GRAD_COMPRESSION, STATIC_GRAPH
from fastp2p.engine.compile import COMPILE
from fastp2p.engine.cuda_graph import CUDA_GRAPH
from fastp2p.engine.fusion import FUSED_CONV, FUSED_KERNELS
from fastp2p.engine.layout import CHANNELS_LAST
from fastp2p.engine.optimizers import ADAM_KERNEL, ADAM_MOMENTS, FUSED_ADAM
from fastp2p.engine.overlap import OVERLAP_OPTIMIZER
from fastp2p.engine.passes import BATCH_PASSES
from fastp2p.engine.precision import AMP
from fastp2p.engine.streams import TWO_STREAMS
from fastp2p.engine.weight_cast import FOREACH_CAST, STEP_CAST

PATHS = (AMP, CHANNELS_LAST, FUSED_KERNELS, FUSED_ADAM, FOREACH_CAST, STEP_CAST, BATCH_PASSES, CUDA_GRAPH,
         CUDNN_SEARCH_ALL, TWO_STREAMS, OVERLAP_OPTIMIZER, ADAM_KERNEL, ADAM_MOMENTS, FUSED_CONV, COMPILE,
         GRAD_COMPRESSION, BUCKET_CAP_MB, STATIC_GRAPH)
BY_NAME = {path.name: path for path in PATHS}


def bench_rows():
    """(row name, path) of each path with a benchmark row, in row order."""
    return [(path.bench_row, path) for path in PATHS if path.bench_row]
