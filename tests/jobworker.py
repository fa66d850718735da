"""A job worker in a process of its own, for the tests: ``python jobworker.py
NODE_ADDRESS SECONDS_PER_JOB [ACK_DEADLINE [FAIL_EVERY]]``. It joins job group
``w`` on ``job.>``, prints ``ready``, then one JSON line per job it finished
(job id, attempt, data, holder) just after acknowledging it. With FAIL_EVERY
N, a job whose data is a multiple of N fails its first attempt (a transient
failure: not acknowledged, so it comes again after its deadline)."""

import json
from collections import Counter
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mesh import Client


def main():
    address, seconds = sys.argv[1], float(sys.argv[2])
    deadline = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
    fail_every = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    client = Client(address)

    def work(message):
        time.sleep(seconds)
        if fail_every and message.attempt == 1 and message.data % fail_every == 0:
            return
        client.ack(message)
        print(json.dumps({"job": message.job, "attempt": message.attempt, "data": message.data,
                          "holder": message.headers["h"]}), flush=True)

    client.subscribe("job.>", work, queue="w", capacity=5, ack_deadline=deadline, max_attempts=10)
    print("ready", flush=True)
    time.sleep(3600)


class Workers:
    """Worker processes started by a test, every finished job collected in ``done`` (each line
    with ``at``: when the test read it, time.monotonic()); ``stop()`` kills them by PID."""

    def __init__(self):
        self.procs = []
        self.done = []  # every line any worker printed, parsed

    def start(self, address, seconds, deadline=30.0, fail_every=0):
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), address, str(seconds), str(deadline),
                                 str(fail_every)], stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        threading.Thread(target=lambda: [self.done.append({**json.loads(line), "at": time.monotonic()})
                                         for line in proc.stdout], daemon=True).start()
        return proc

    def tally(self):
        """(how many times each job's data was done: a Counter, the duplicates in all)."""
        times = Counter(line["data"] for line in self.done)
        return times, sum(n - 1 for n in times.values())

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
