"""``python -m fastp2p.launch``: torchrun, whose arguments it takes unchanged, with one-line rendezvous errors.

A node of a multi-node job that cannot meet the others (the --rdzv_endpoint unreachable, or the other nodes not
arriving within the rendezvous' join_timeout) gets from torchrun a traceback and the C10d store's retry log lines.
Here it ends with one line that names the endpoint and what to check, exit code 2. The first worker to fail gives the
launcher its exit code (torchrun's is 1 whatever the workers said, which hides fastp2p's 2 for bad input from a
script); everything else (the workers, their output, --max-restarts) is torchrun's own.

    python -m fastp2p.launch --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:PORT \\
        --rdzv_id JOB -m fastp2p.train --dataroot ... --name ...
"""

import os
import sys

CPP_LOG_LEVEL = "TORCH_CPP_LOG_LEVEL"


def import_torchrun_quietly():
    """torch.distributed.run, imported with torch's C++ log level at errors only (read once, when torch loads),
    which silences the store's connection retries in this agent process; its workers get the caller's level."""
    given = os.environ.get(CPP_LOG_LEVEL)
    os.environ[CPP_LOG_LEVEL] = "FATAL"
    try:
        from torch.distributed import run
    finally:
        if given is None:
            del os.environ[CPP_LOG_LEVEL]
        else:
            os.environ[CPP_LOG_LEVEL] = given
    return run


def rendezvous_problem(args, error):
    """The one line a failed rendezvous ends with."""
    cause = error.__cause__ or error.__context__
    said = str(cause or error).strip()
    joined_late = "the other nodes did not join within the rendezvous' join_timeout"
    detail = said.splitlines()[0] if said and said != type(error).__name__ else joined_late
    endpoint = args.rdzv_endpoint or "(no --rdzv_endpoint)"
    return (f"fastp2p.launch: error: this node could not meet the other nodes (--nnodes {args.nnodes}, job "
            f"'{args.rdzv_id}') at the rendezvous {endpoint} ({args.rdzv_backend}): {type(error).__name__}: "
            f"{detail.rstrip('.')}; check that the endpoint's host is reachable from here, that its port is open, "
            f"and that every node runs the same command")


def main(argv=None):
    run = import_torchrun_quietly()
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError

    args = run.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run.run(args)
    except RendezvousError as error:
        print(rendezvous_problem(args, error), file=sys.stderr)
        return 2
    except ChildFailedError as error:  # torchrun's summary of which worker failed and how, without its traceback
        print(error.format_msg(), file=sys.stderr)
        _, root_cause = error.get_first_failure()  # torchrun stops the other workers with a signal after it
        return root_cause.exitcode if root_cause.exitcode > 0 else 1  # a signal's code is negative
    return 0


if __name__ == "__main__":
    sys.exit(main())
