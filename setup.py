from setuptools import setup

setup(
    name="meshnode",
    version="0.1.0",
    description="A broker-less publish/subscribe mesh over ZeroMQ, with ZooKeeper membership",
    packages=["mesh", "discovery", "nodes", "nodes.edge", "nodes.history", "nodes.queues", "nodes.hooks",
              "nodes.cli", "meshtest"],
    python_requires=">=3.11",  # tomllib (nodes/cli/config.py), asyncio.timeout (mesh/aio.py)
    install_requires=[
        "pyzmq>=25.1",
        "gevent>=23.9",
        "msgpack>=1.0.5",
        "kazoo>=2.9",
        "ws4py>=0.5.1",
        "PyJWT[crypto]>=2.8",  # crypto: RS256, ES256 and EdDSA keys (cryptography)
        "urllib3>=2.0",  # webhook deliveries (nodes/hooks/delivery.py)
        "prometheus-client>=0.17",  # /metrics (nodes/metrics.py)
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6.80", "websocket-client>=1.6", "playwright>=1.40"],
        # The benchmark's peers' Python clients (bench/, docs/PERFORMANCE.md).
        "bench": ["nats-py>=2.6", "redis[hiredis]>=5.0"],
    },
    package_data={"nodes.edge": ["static/*"]},
    entry_points={"console_scripts": ["meshnode=nodes.cli:main"]},
)
