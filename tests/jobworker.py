"""A job worker in a process of its own, for the tests: ``python jobworker.py
NODE_ADDRESS SECONDS_PER_JOB [ACK_DEADLINE]``. It joins job group ``w`` on
``job.>``, prints ``ready``, then one JSON line per job it finished
(job id, attempt, data, holder) just after acknowledging it."""

import json
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
    client = Client(address)

    def work(message):
        time.sleep(seconds)
        client.ack(message)
        print(json.dumps({"job": message.job, "attempt": message.attempt, "data": message.data,
                          "holder": message.headers["h"]}), flush=True)

    client.subscribe("job.>", work, queue="w", capacity=5, ack_deadline=deadline, max_attempts=10)
    print("ready", flush=True)
    time.sleep(3600)


class Workers:
    """Worker processes started by a test, every finished job collected in ``done``; ``stop()`` kills them by PID."""

    def __init__(self):
        self.procs = []
        self.done = []  # every line any worker printed, parsed

    def start(self, address, seconds, deadline=30.0):
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), address, str(seconds), str(deadline)],
                                stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        threading.Thread(target=lambda: [self.done.append(json.loads(line)) for line in proc.stdout],
                         daemon=True).start()
        return proc

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
