"""Remote sources: one small interface, one implementation per protocol, a registry by scheme."""

from conveyor.mirror.sources.base import (
    AsyncReader,
    Source,
    open_async_reader,
    open_source,
    register,
)

__all__ = ["AsyncReader", "Source", "open_async_reader", "open_source", "register"]
