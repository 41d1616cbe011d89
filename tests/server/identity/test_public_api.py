import imds_server.identity

PINNED = {
    "SYSTEM_ASSIGNED", "USER_ASSIGNED", "Identity", "IdentityEndpoint", "IdentityPolicy",
    "IdentityStatistics", "Issue", "IssuedToken", "IssuerError", "LocalIssuer",
    "Placement", "PlacementFile",
    "RemoteIssuer", "TokenCache", "TokenCacheStatistics", "TokenIssuer", "TokenRequest",
    "TokenServiceApp", "cache_key", "load_credentials", "openid_configuration", "public_jwk",
    "read_identities", "serve_token_service", "token_body",
}


def test_public_surface_is_pinned() -> None:
    assert set(imds_server.identity.__all__) == PINNED
    for name in imds_server.identity.__all__:
        assert hasattr(imds_server.identity, name)
