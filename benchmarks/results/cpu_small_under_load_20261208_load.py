"""Load that comes and goes: two busy processes for 4 s, then 3 s idle, until killed."""
import multiprocessing, time
def spin(seconds):
    end = time.time() + seconds
    while time.time() < end:
        pass
if __name__ == "__main__":
    while True:
        procs = [multiprocessing.Process(target=spin, args=(4,)) for _ in range(2)]
        [p.start() for p in procs]; [p.join() for p in procs]
        time.sleep(3)
