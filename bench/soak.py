"""Soak: a 3-node mesh under steady load for N minutes, reporting RSS and open
file descriptors of every node over time (they must stay flat), plus delivery
counts and sequence gaps. Not run in CI.

    .venv/bin/python -m bench.soak --minutes 10 [--rate 2000] [--websockets 100]
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from mesh import Client


def start_node(name, *extra):
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bin", "meshnode"), "run", "--name", name,
                             "--port", "0", "--log-level", "WARNING", *extra], stdout=subprocess.PIPE, text=True)
    fields = dict(p.split("=", 1) for p in proc.stdout.readline().split()[2:])
    return proc, fields


def sample(pid):
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return {"rss_mib": round(rss / 1024, 1), "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=int, default=2000, help="messages per second per publisher (3 publishers)")
    parser.add_argument("--churn", type=float, default=1.0, help="subscribe/unsubscribe cycles per second")
    parser.add_argument("--interval", type=float, default=30, help="seconds between samples")
    args = parser.parse_args()
    procs = []
    try:
        a, fa = start_node("soak-a", "--http", "0")
        procs.append(a)
        b, fb = start_node("soak-b", "--peer", fa["control"])
        procs.append(b)
        c, fc = start_node("soak-c", "--peer", fa["control"], "--peer", fb["control"])
        procs.append(c)
        time.sleep(2)
        stop = threading.Event()
        totals = {"published": 0}
        subs = []

        def publisher(control, subject):
            with Client(control) as client:
                client.wait_for_interest(subject, timeout=10)
                period = 1.0 / args.rate
                next_at = time.monotonic()
                while not stop.is_set():
                    client.publish(subject, b"x" * 100)
                    totals["published"] += 1
                    next_at += period
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)

        def subscriber(control):
            client = Client(control)
            sub = client.subscribe("soak.>")
            subs.append(sub)
            while not stop.is_set():
                try:
                    sub.get(timeout=0.5)
                except TimeoutError:
                    pass
            client.close()

        def churner(control):
            with Client(control) as client:
                while not stop.is_set():
                    client.subscribe("churn.x").unsubscribe()
                    time.sleep(1.0 / args.churn)

        threads = [threading.Thread(target=subscriber, args=(f["control"],)) for f in (fa, fb, fc)]
        threads += [threading.Thread(target=churner, args=(fb["control"],))]
        for t in threads:
            t.start()
        time.sleep(1)
        pubs = [threading.Thread(target=publisher, args=(f["control"], f"soak.{name}"))
                for f, name in ((fa, "a"), (fb, "b"), (fc, "c"))]
        for t in pubs:
            t.start()
        deadline = time.monotonic() + args.minutes * 60
        started = time.monotonic()
        while True:
            row = {"t_s": round(time.monotonic() - started), "published": totals["published"],
                   "received": sum(s.received for s in subs), "gaps": sum(s.gaps for s in subs),
                   **{name: sample(p.pid) for name, p in zip("abc", procs)}}
            print(json.dumps(row), flush=True)
            if time.monotonic() >= deadline:
                break
            time.sleep(min(args.interval, max(0.1, deadline - time.monotonic())))
        stop.set()
        for t in pubs + threads:
            t.join(10)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)


if __name__ == "__main__":
    main()
