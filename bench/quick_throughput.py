"""Quick side-by-side throughput: raw pyzmq PUB->SUB vs mesh publish->subscribe across 2 nodes.

One publisher process and one subscriber process per case, 100-byte payloads,
tcp loopback. Prints delivered msg/s at the subscriber and the ratio to raw
pyzmq. The full benchmark suite (NATS, Redis, latency, fan-out) is bench/'s job;
this is the quick check.

    .venv/bin/python bench/quick_throughput.py [--messages 200000]
"""

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
PAYLOAD = b"x" * 100


def raw_subscriber(endpoint, count):
    import zmq

    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(endpoint)
    sock.subscribe(b"bench.")
    print("ready", flush=True)
    return _count(lambda timeout: sock.recv_multipart() if sock.poll(timeout * 1000) else None, count)


def raw_publisher(endpoint, count):
    import zmq

    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.bind(endpoint)
    time.sleep(1.0)  # let the subscriber connect and subscribe
    for _ in range(count):
        sock.send_multipart((b"bench.x.", PAYLOAD))
    time.sleep(1.0)


def mesh_subscriber(node, count):
    from mesh import Client

    sub = Client(node).subscribe("bench.>")
    print("ready", flush=True)

    def recv(timeout):
        try:
            return sub.get(timeout=timeout)
        except TimeoutError:
            return None
    delivered, seconds = _count(recv, count)
    print(f"gaps={sub.gaps}", file=sys.stderr)
    return delivered, seconds


def mesh_publisher(node, count):
    from mesh import Client

    with Client(node) as client:
        if not client.wait_for_interest("bench.x", timeout=10):
            raise SystemExit("no interest reached the publisher")
        for _ in range(count):
            client.publish("bench.x", PAYLOAD)


def _count(recv, count):
    """Count messages until ``count`` arrived or none came for 2 s."""
    first = recv(30)
    started = last = time.perf_counter()
    delivered = 1 if first is not None else 0
    while delivered < count:
        if recv(2) is None:
            break
        delivered += 1
        last = time.perf_counter()
    print(f"{delivered} {last - started}", flush=True)
    return delivered, last - started


def _run_pair(sub_args, pub_args):
    me = [sys.executable, os.path.abspath(__file__)]
    sub = subprocess.Popen(me + sub_args, stdout=subprocess.PIPE, text=True)
    assert sub.stdout.readline().strip() == "ready"
    pub = subprocess.Popen(me + pub_args)
    out = sub.stdout.readline().split()
    sub.wait(60)
    pub.wait(60)
    delivered, seconds = int(out[0]), float(out[1])
    return delivered, delivered / seconds if seconds else 0.0


def _start_node(name, *extra):
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bin", "meshnode"), "run", "--name", name,
                             "--port", "0", "--log-level", "WARNING", *extra], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    return proc, dict(p.split("=", 1) for p in line.split()[2:])["control"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args()
    roles = {"raw-sub": raw_subscriber, "raw-pub": raw_publisher,
             "mesh-sub": mesh_subscriber, "mesh-pub": mesh_publisher}
    if args.role:
        roles[args.role](args.target, args.messages)
        return
    n = ["--messages", str(args.messages)]
    results = {}
    endpoint = "tcp://127.0.0.1:7690"
    print(f"raw pyzmq PUB->SUB, {args.messages} x 100 B ...", flush=True)
    results["raw pyzmq PUB->SUB"] = _run_pair(["--role", "raw-sub", "--target", endpoint, *n],
                                              ["--role", "raw-pub", "--target", endpoint, *n])
    a, a_addr = _start_node("bench-a")
    b, b_addr = _start_node("bench-b", "--peer", a_addr)
    try:
        time.sleep(2)  # the static link forms within one introduction interval
        print("mesh across 2 nodes ...", flush=True)
        results["mesh A->B (2 nodes)"] = _run_pair(["--role", "mesh-sub", "--target", b_addr, *n],
                                                   ["--role", "mesh-pub", "--target", a_addr, *n])
        print("mesh on one node ...", flush=True)
        results["mesh A->A (1 node)"] = _run_pair(["--role", "mesh-sub", "--target", a_addr, *n],
                                                  ["--role", "mesh-pub", "--target", a_addr, *n])
    finally:
        for proc in (a, b):
            proc.terminate()
            proc.wait(10)
    raw_rate = results["raw pyzmq PUB->SUB"][1]
    print(f"\n{'case':<24}{'delivered':>12}{'msg/s':>12}{'x raw':>8}")
    for case, (delivered, rate) in results.items():
        print(f"{case:<24}{delivered:>12}{rate:>12,.0f}{rate / raw_rate:>8.2f}")


if __name__ == "__main__":
    main()
