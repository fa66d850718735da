"""A client process of a test bed host: publishes and subscribes through its node.

``python tests/hostclient.py NODE_ADDRESS NAME RATE``, run inside the host's
namespace (tests/meshbed.py starts it). Driven by lines on stdin:

* at start it subscribes to ``part.>`` (the counted traffic) and ``warm.>``,
  then publishes ``warm.NAME`` every 0.1 s and prints ``{"warm": [names]}``
  each time it hears a host it had not heard yet;
* ``go``: stops warming and publishes ``part.NAME`` at RATE messages a
  second, each carrying the time it was published;
* ``stop``: stops publishing, flushes, prints ``{"sent": n}``;
* ``leave``: the thread that reads ``part.>`` takes the subscription's
  position between two reads (a position taken while another thread is
  inside ``get`` may miss the message being handed out) and unsubscribes
  (what it received and missed so far stays counted); prints ``{"left": t}``,
  the position's time;
* ``back``: subscribes to ``part.>`` again with ``since=`` that position
  (history recovery, docs/HISTORY.md); prints ``{"back": {recovered,
  replayed, lost, streams: [[origin, subject, state]], unreachable}}``;
* ``report``: prints ``{"received", "gaps", "dropped", "log"}``: the counters
  of the ``part.>`` subscriptions, summed, and per message received
  [subject, published at, received at, epoch, seq, replayed] (wall clock:
  the publisher's and this host's).
"""

import json
import sys
import threading
import time

from mesh import Client


def main(address, name, rate):
    with Client(address) as client:
        counted = [client.subscribe("part.>")]  # the current one; earlier ones were left
        earlier = {"received": 0, "gaps": 0, "dropped": 0}
        warm = client.subscribe("warm.>")
        heard = set()
        log = []
        lock = threading.Lock()
        going = threading.Event()
        stopped = threading.Event()
        present = threading.Event()
        present.set()
        position = [None]
        leaving = threading.Event()  # "leave" asked: the reading thread takes the position and unsubscribes

        def say(**fields):
            with lock:
                print(json.dumps(fields), flush=True)

        def read_counted():
            while True:
                present.wait()
                sub = counted[0]
                try:
                    message = sub.get(timeout=0.05)
                    log.append([message.subject, message.data, time.time(), message.epoch, message.seq,
                                message.replayed])
                except TimeoutError:
                    pass
                if leaving.is_set():  # the position is taken where the messages are read: none is handed out after it
                    leaving.clear()
                    present.clear()
                    position[0] = sub.position
                    sub.unsubscribe()
                    for key in earlier:
                        earlier[key] += getattr(sub, key)
                    say(left=position[0].time)

        def read_warm():
            while True:
                message = warm.get()
                if message.subject not in heard:
                    heard.add(message.subject)
                    say(warm=sorted(heard))

        def publish():
            while not going.wait(0.1):
                client.publish(f"warm.{name}", 0)
            sent, started = 0, time.monotonic()
            while not stopped.is_set():
                client.publish(f"part.{name}", time.time())
                sent += 1
                time.sleep(max(0.0, started + sent / rate - time.monotonic()))
            client.flush()
            say(sent=sent)

        def counters():  # while left, the last subscription is in ``earlier`` already
            return {key: earlier[key] + (getattr(counted[0], key) if present.is_set() else 0) for key in earlier}

        for work in (read_counted, read_warm, publish):
            threading.Thread(target=work, daemon=True).start()
        for line in sys.stdin:
            command = line.strip()
            if command == "go":
                going.set()
            elif command == "stop":
                stopped.set()
            elif command == "leave":
                leaving.set()
            elif command == "back":
                sub = client.subscribe("part.>", since=position[0])
                counted[0] = sub
                present.set()
                recovery = sub.recovery
                say(back={"recovered": recovery.recovered, "replayed": recovery.replayed, "lost": recovery.lost,
                          "streams": sorted([*key, state] for key, state in recovery.streams.items()),
                          "unreachable": recovery.unreachable})
            elif command == "report":
                say(**counters(), log=list(log))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
