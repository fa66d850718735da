"""The lead passes on: a reader that stops waiting (its subscription closed, or
its timeout passed) right after being handed the lead leaves none stranded."""

import threading
import time

from meshhelpers import collect, warm_up

from mesh import Client


def test_readers_that_stop_waiting_leave_someone_reading_for_the_rest(start_node):
    a = start_node("A")
    with Client(a.address) as pub, Client(a.address) as client:
        quitters = [client.subscribe(f"h.quit.{i}") for i in range(5)]
        stayer = client.subscribe("h.stay")
        warm_up(pub, "h.stay", [stayer])
        outcomes = []

        def wait_briefly(sub):
            try:
                sub.get(timeout=0.3)
            except (TimeoutError, RuntimeError) as exc:
                outcomes.append(type(exc).__name__)

        readers = [threading.Thread(target=wait_briefly, args=(sub,)) for sub in quitters]
        for reader in readers:
            reader.start()
        time.sleep(0.05)
        got = []
        stay = threading.Thread(target=lambda: got.extend(collect(stayer, 3, timeout=10)))
        stay.start()  # follows one of the quitters, which time out or are closed meanwhile
        quitters[0].unsubscribe()
        for reader in readers:
            reader.join(5)
        for i in range(3):
            time.sleep(0.2)
            pub.publish("h.stay", i)
        stay.join(10)
        assert not stay.is_alive(), "the remaining reader was left without anyone reading"
        assert [m.data for m in got] == [0, 1, 2]
        assert sorted(outcomes) == ["RuntimeError"] + ["TimeoutError"] * 4
