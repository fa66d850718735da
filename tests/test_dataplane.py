"""The data plane's peer changes (nodes/dataplane.py), on real ZeroMQ sockets in a
gevent-patched child process, as in a node."""

import json
import subprocess
import sys
import textwrap

from meshtest.nodeproc import ROOT

BURST = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import json, socket
    import gevent, zmq
    from nodes.dataplane import COALESCE_SECONDS, DataPlane

    def free_endpoints(count):
        endpoints = []
        for _ in range(count):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                endpoints.append(f"tcp://127.0.0.1:{probe.getsockname()[1]}")
        return endpoints

    plane = DataPlane(zmq.Context.instance(), "127.0.0.1", hwm=1000, max_payload=1024)
    plane.start()
    peers, seen = free_endpoints(8), {}
    for count in range(1, 9):  # eight joins in a burst
        plane.set_peers(peers[:count])
    seen["during"] = plane.proxy_restarts  # applied in a greenlet: not yet
    gevent.sleep(COALESCE_SECONDS * 3)
    seen["burst"] = [plane.proxy_restarts, plane.peer_endpoints == set(peers), set(plane.links) == set(peers)]
    plane.set_peers(peers[:3])  # five leave at once; then, while that pause lasts, one comes back
    gevent.sleep(COALESCE_SECONDS / 4)
    seen["at_once"] = [plane.proxy_restarts, plane.peer_endpoints == set(peers[:3])]  # a lone change waits for nothing
    plane.set_peers(peers[:4])
    plane.set_peers(peers[:5])
    gevent.sleep(COALESCE_SECONDS * 3)
    seen["leaves"] = [plane.proxy_restarts, plane.peer_endpoints == set(peers[:5])]
    plane.set_peers(peers[:5])  # no change: no restart
    gevent.sleep(COALESCE_SECONDS * 3)
    seen["same"] = plane.proxy_restarts
    plane.set_peers([*peers[:5], "tcp://*:5555"])  # libzmq refuses to dial it: one try, not one every 100 ms
    gevent.sleep(COALESCE_SECONDS * 5)
    seen["refused"] = [plane.proxy_restarts, plane.peer_endpoints == set(peers[:5])]
    plane.stop()
    print(json.dumps(seen))
""")


def test_a_burst_of_peer_changes_restarts_the_mesh_proxy_once():
    out = subprocess.run([sys.executable, "-c", BURST], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen == {"during": 0, "burst": [1, True, True], "at_once": [2, True], "leaves": [3, True], "same": 3,
                    "refused": [4, True]}
