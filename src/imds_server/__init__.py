"""imds-server: the Azure-compatible instance metadata service over an ``imds_replica``.

The VM-facing API is a pure handler (``VmApi``) over the replica's view; ``Server`` is the
thin trio HTTP/1.1 shell around it (httptools), with the admin API beside it. See
``docs/server.md``.
"""

from ._admin import AdminApi, AdminHandler, AdminResult
from ._api import ApiPolicy, ApiStatistics, VmApi
from ._cache import Answer, AnswerCache
from ._config import SETTINGS, ServerConfig, config_from_mapping, load_config
from ._connection import ConnectionLimits, Listener, ListenerStatistics
from ._freshness import freshness
from ._http import HttpConnection, HttpLimits, ProtocolError
from ._listen import Address, check_separate, inherited, set_ttl
from ._observe import AccessRecord, NullObserver, RequestObserver
from ._ratelimit import TokenBuckets
from ._render import parse_tags, render_instance, render_tags, stringify
from ._request import BadQuery, Offload, Park, Request, Response, Submit, parse_query
from ._schedule import APPROVAL_SOURCE, approval_key, render_events
from ._server import Server, ServerStatistics
from ._storage import open_log
from ._versions import NEWEST_THREE, VERSIONS, gate_compute

__all__ = [
    "APPROVAL_SOURCE",
    "NEWEST_THREE",
    "SETTINGS",
    "VERSIONS",
    "AccessRecord",
    "Address",
    "AdminApi",
    "AdminHandler",
    "AdminResult",
    "Answer",
    "AnswerCache",
    "ApiPolicy",
    "ApiStatistics",
    "BadQuery",
    "ConnectionLimits",
    "HttpConnection",
    "HttpLimits",
    "Listener",
    "ListenerStatistics",
    "NullObserver",
    "Offload",
    "Park",
    "ProtocolError",
    "Request",
    "RequestObserver",
    "Response",
    "Server",
    "ServerConfig",
    "ServerStatistics",
    "Submit",
    "TokenBuckets",
    "VmApi",
    "approval_key",
    "check_separate",
    "config_from_mapping",
    "freshness",
    "gate_compute",
    "inherited",
    "load_config",
    "open_log",
    "parse_query",
    "parse_tags",
    "render_events",
    "render_instance",
    "render_tags",
    "set_ttl",
    "stringify",
]
