import imds_server

PINNED = {
    "APPROVAL_SOURCE", "NEWEST_THREE", "SETTINGS", "VERSIONS", "AccessRecord", "Address",
    "AdminApi", "AdminHandler", "AdminResult", "Answer", "AnswerCache", "ApiPolicy",
    "ApiStatistics", "BadQuery", "ConnectionLimits", "HttpConnection", "HttpLimits",
    "Listener", "ListenerStatistics", "NullObserver", "Offload", "Park", "ProtocolError", "Request",
    "RequestObserver", "Response", "Server", "ServerConfig", "ServerStatistics", "Submit",
    "TokenBuckets", "VmApi", "approval_key", "check_separate", "config_from_mapping",
    "freshness", "gate_compute", "inherited", "load_config", "open_log", "parse_query",
    "parse_tags", "render_events", "render_instance", "render_tags", "set_ttl", "stringify",
}


def test_public_surface_is_pinned() -> None:
    assert set(imds_server.__all__) == PINNED
    for name in imds_server.__all__:
        assert hasattr(imds_server, name)
