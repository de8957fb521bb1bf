"""Remote sources: one small interface, one implementation per protocol, a registry by scheme."""

from conveyor.mirror.sources.base import Source, open_source, register

__all__ = ["Source", "open_source", "register"]
