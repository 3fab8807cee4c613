"""Holds a trainer's DataLoader workers at one stage of their start-up, so that tests/test_loader_workers.py can kill
the trainer exactly there. Python imports this file as it starts, in every process of a test's run, whose PYTHONPATH
starts with this folder; it does nothing unless FASTP2P_TEST_PAUSE is set.

FASTP2P_TEST_PAUSE=STAGE:FOLDER, STAGE one of
  interpreter  a spawned worker, as its interpreter starts: before it reads anything from the trainer
  import       a spawned or forkserver-started worker, as it first imports torch (it imports the trainer's modules
               before it unpickles its dataset)
A held worker writes FOLDER/<its pid> and waits for FOLDER/resume (at most a minute), then goes on starting.
"""

import os
import sys
import time


def hold(folder):
    open(os.path.join(folder, str(os.getpid())), "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(folder, "resume")) and time.monotonic() < deadline:
        time.sleep(0.02)


def hold_on_importing_torch(folder):
    held = []

    def hook(event, args):
        if event == "import" and args[0] == "torch" and not held:
            held.append(True)
            hold(folder)

    sys.addaudithook(hook)


def main():
    stage, _, folder = os.environ.get("FASTP2P_TEST_PAUSE", "").partition(":")
    if stage == "interpreter" and "--multiprocessing-fork" in sys.argv:
        hold(folder)
    elif stage == "import" and sys.argv[:1] == ["-c"]:
        # spawned workers, and the fork server, whose forked workers inherit the hook (the server itself, started
        # from `python -m`, and the resource tracker never import torch)
        hold_on_importing_torch(folder)


main()
