"""Membership backends: who a node's peers are (static list, ZooKeeper)."""

from .base import Discovery, validate_member
from .static import StaticDiscovery

__all__ = ["Discovery", "StaticDiscovery", "validate_member"]
