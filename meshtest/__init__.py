"""The test harness the tests and the benchmark share: real ``meshnode``
processes (:mod:`meshtest.nodeproc`) and real ZooKeeper servers
(:mod:`meshtest.zkserver`), cleaned up by PID."""
