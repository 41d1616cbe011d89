"""The fleet transport over NATS JetStream: wire contract, cursor, stream source, publisher.

``_wire`` and ``_cursor`` are sans-I/O; ``_bridge`` is the one module that imports nats-py
(on its own asyncio loop in its own thread); ``_source`` and ``_publisher`` are the trio
shells over it.
"""

from ._publisher import Publisher, PublishReport
from ._source import StreamSource, StreamSourceStatistics
from ._transport import ConnectOptions, TransportError

__all__ = ["ConnectOptions", "PublishReport", "Publisher", "StreamSource",
           "StreamSourceStatistics", "TransportError"]
