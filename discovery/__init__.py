"""Membership backends: who a node's peers are (static list, ZooKeeper)."""

from .base import Discovery, validate_member
from .static import StaticDiscovery
from .zookeeper import DiscoveryError, ZooKeeperDiscovery

__all__ = ["Discovery", "DiscoveryError", "StaticDiscovery", "ZooKeeperDiscovery", "validate_member"]
