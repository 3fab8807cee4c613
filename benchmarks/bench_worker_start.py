"""What each ``--worker_start`` method costs the torch loader: the wait for the first batch (the workers start,
import torch and fastp2p, and receive the dataset) and the time of a whole epoch after it, on the built-in
dataset with the README's main command's data flags (load/crop 128, batch 4) and the default 4 workers.

    python benchmarks/bench_worker_start.py            # writes benchmarks/results/worker_start_<host>_<date>.{json,md}

Each method runs in a fresh process (a forkserver, once started, would serve the next method's workers), in
turn, ``--repeats`` times; the table gives the medians.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ("fork", "forkserver", "spawn")


def measure(method, num_threads):
    """One fresh process's figures for ``method``: seconds to the first batch, then per epoch."""
    import torch

    from fastp2p.data import create_dataset
    from fastp2p.data.builtin import builtin_dataroot

    torch.set_num_threads(1)
    opt = argparse.Namespace(
        dataroot=builtin_dataroot(), phase="train", dataset_mode="aligned", direction="BtoA", input_nc=3,
        output_nc=3, serial_batches=False, num_threads=num_threads, batch_size=4, load_size=128, crop_size=128,
        max_dataset_size=float("inf"), preprocess="resize_and_crop", no_flip=False, seed=0, worker_start=method)
    loader = create_dataset(opt)
    start = time.perf_counter()
    batches = iter(loader)
    next(batches)
    first = time.perf_counter() - start
    for _ in batches:
        pass
    epochs = []
    for epoch in (1, 2):
        loader.set_epoch(epoch)
        start = time.perf_counter()
        for _ in loader:
            pass
        epochs.append(time.perf_counter() - start)
    loader.close()
    return {"first_batch_s": first, "epoch_s": statistics.median(epochs), "images": len(loader)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num_threads", type=int, default=4, help="loader workers (the trainer's default)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)  # the child process's job
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.num_threads)))
        return
    runs = {method: [] for method in METHODS}
    for _ in range(args.repeats):
        for method in METHODS:
            out = subprocess.run([sys.executable, __file__, "--one", method, "--num_threads", str(args.num_threads)],
                                 check=True, capture_output=True, text=True).stdout
            runs[method].append(json.loads(out.strip().splitlines()[-1]))
            print(method, runs[method][-1], flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout
    import torch

    meta = {"date": datetime.date.today().isoformat(), "commit": commit.strip(), "host": platform.node(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "num_threads": args.num_threads, "repeats": args.repeats}
    rows = [{"method": m, "first_batch_s": statistics.median(r["first_batch_s"] for r in runs[m]),
             "epoch_s": statistics.median(r["epoch_s"] for r in runs[m]), "images": runs[m][0]["images"]}
            for m in METHODS]
    stem = os.path.join(args.out, f"worker_start_cpu{os.cpu_count()}_{meta['date'].replace('-', '')}")
    os.makedirs(args.out, exist_ok=True)
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows, "runs": runs}, f, indent=1)
    lines = [f"# Loader worker start methods ({meta['cpus']} CPUs, torch {meta['torch']}, commit {meta['commit']}, "
             f"{args.num_threads} workers, median of {args.repeats})", "",
             "| --worker_start | first batch (s) | epoch after it (s) | images |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['first_batch_s']:.2f} | {r['epoch_s']:.2f} | {r['images']} |" for r in rows]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
