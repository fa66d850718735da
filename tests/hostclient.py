"""A client process of a test bed host: publishes and subscribes through its node.

``python tests/hostclient.py NODE_ADDRESS NAME RATE``, run inside the host's
namespace (tests/meshbed.py starts it). Driven by lines on stdin:

* at start it subscribes to ``part.>`` (the counted traffic) and ``warm.>``,
  then publishes ``warm.NAME`` every 0.1 s and prints ``{"warm": [names]}``
  each time it hears a host it had not heard yet;
* ``go``: stops warming and publishes ``part.NAME`` at RATE messages a
  second, each carrying the time it was published;
* ``stop``: stops publishing, flushes, prints ``{"sent": n}``;
* ``report``: prints ``{"received", "gaps", "dropped", "log"}``: the counters
  of the ``part.>`` subscription and, per message received, [subject,
  published at, received at] (wall clock: every host shares this machine's).
"""

import json
import sys
import threading
import time

from mesh import Client


def main(address, name, rate):
    with Client(address) as client:
        counted = client.subscribe("part.>")
        warm = client.subscribe("warm.>")
        heard = set()
        log = []
        lock = threading.Lock()
        going = threading.Event()
        stopped = threading.Event()

        def say(**fields):
            with lock:
                print(json.dumps(fields), flush=True)

        def read_counted():
            while True:
                message = counted.get()
                log.append([message.subject, message.data, time.time()])

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

        for work in (read_counted, read_warm, publish):
            threading.Thread(target=work, daemon=True).start()
        for line in sys.stdin:
            command = line.strip()
            if command == "go":
                going.set()
            elif command == "stop":
                stopped.set()
            elif command == "report":
                say(received=counted.received, gaps=counted.gaps, dropped=counted.dropped, log=list(log))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
