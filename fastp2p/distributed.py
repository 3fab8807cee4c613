"""Process-group setup for torchrun, and the rank questions the rest of the code asks."""

import os

import torch
import torch.distributed as dist

from fastp2p.errors import OptionError, StoppedOnMainRank, first_line


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_distributed() else 0


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main_process():
    """Rank 0 alone writes checkpoints, logs and result pages."""
    return rank() == 0


def print_main(*args, **kwargs):
    """print() on rank 0 only: every rank of a run would print the same line."""
    if is_main_process():
        print(*args, **kwargs)


def node_count():
    """The machines the torchrun job spans (1 outside torchrun)."""
    return max(1, int(os.environ.get("WORLD_SIZE", 1)) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def restart_count():
    """How often torchrun (--max-restarts) has restarted this job's workers: > 0 in a restarted worker."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))


def decided_on_main(decide):
    """``decide()`` run once for the job, on rank 0, and its result handed to every rank.

    What a run's checkpoint folder holds (its lock, which set to resume from) is decided where it is written, and
    every rank must follow the same decision even when another node sees another folder. When rank 0 fails, the
    other ranks raise StoppedOnMainRank instead of waiting for it in a collective; rank 0 raises its own error.
    """
    if not is_distributed():
        return decide()
    box = [None]
    if is_main_process():
        try:
            box = [(True, decide())]
        except BaseException as error:
            dist.broadcast_object_list([(False, f"{type(error).__name__}: {first_line(error)}")], src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    decided, value = box[0]
    if not decided:
        raise StoppedOnMainRank(f"rank 0 stopped the run ({value})")
    return value


def init_distributed(use_cuda):
    """Join the torchrun process group when WORLD_SIZE > 1 and return this process's device.

    On a GPU that is the current CUDA device, which use_gpu chose from --gpu_ids. NCCL on GPUs, gloo on CPUs. A
    single process (python -m, or torchrun with one process) stays ungrouped, so no collective is ever paid for.
    """
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not is_distributed():
        store, rank, world = next(dist.rendezvous("env://"))
        # torchrun's agent keeps one store for the job: after a restart (--max-restarts) the killed workers' keys
        # are still there, and gloo would read the dead rank 0's address from them
        attempt = dist.PrefixStore(f"fastp2p/attempt_{restart_count()}/", store)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", store=attempt, rank=rank, world_size=world)
    return torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")


def init_device(gpu_ids):
    """This process's device for --gpu_ids (see use_gpu), in the torchrun process group when there is one."""
    return init_distributed(use_gpu(gpu_ids))


def use_gpu(gpu_ids):
    """Pick this process's device from --gpu_ids and say whether it is a GPU.

    One process trains on the first listed id; under torchrun the process of local rank r on gpu_ids[r]. The
    chosen GPU becomes torch's current device, which init_distributed hands out. Without CUDA a request for a
    GPU warns and falls back to the CPU.
    """
    if not gpu_ids:
        return False
    listed = ",".join(map(str, gpu_ids))
    if not torch.cuda.is_available():
        print(f"warning: --gpu_ids {listed} asks for a GPU but CUDA is not available; "
              f"running on CPU (pass --gpu_ids -1 to say so)")
        return False
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", local_rank + 1))
    if len(gpu_ids) < local_processes:
        raise OptionError(f"--gpu_ids {listed} lists {len(gpu_ids)} GPU(s) for the {local_processes} processes "
                          f"on this machine: give one id per process, e.g. --gpu_ids "
                          f"{','.join(map(str, range(local_processes)))}")
    count = torch.cuda.device_count()
    missing = [str(gpu) for gpu in gpu_ids if gpu >= count]
    if missing:
        raise OptionError(f"--gpu_ids {listed}: no GPU {','.join(missing)} on this machine, which has {count} "
                          f"visible GPU(s), numbered from 0")
    if len(gpu_ids) > local_processes and local_rank == 0:
        print(f"warning: --gpu_ids {listed} lists {len(gpu_ids)} GPUs for {local_processes} process(es), one GPU "
              f"each: GPUs {','.join(map(str, gpu_ids[local_processes:]))} stay idle (start one process per GPU "
              f"with torchrun --nproc_per_node={len(gpu_ids)})")
    torch.cuda.set_device(gpu_ids[local_rank])
    return True


def barrier():
    if is_distributed():
        dist.barrier()


def cleanup_distributed():
    if is_distributed():
        dist.destroy_process_group()
