"""Membership backends: who a node's peers are (static list, ZooKeeper)."""

from mesh.zkmembers import DiscoveryError

from .base import Discovery
from .static import StaticDiscovery
from .zookeeper import ZooKeeperDiscovery

__all__ = ["Discovery", "DiscoveryError", "StaticDiscovery", "ZooKeeperDiscovery"]
