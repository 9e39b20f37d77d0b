"""Registration of the gateway for `hdc up` and its console script `hdc-gateway`."""

from __future__ import annotations

import ipaddress

from cryptography.hazmat.primitives import serialization
from hdc_common.errors import ConfigError
from hdc_common.identity import InternalTokenSigner
from hdc_common.service import Components, Service, run_service

from hdc_gateway.app import GatewayApp
from hdc_gateway.settings import GatewaySettings


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _signer(settings: GatewaySettings) -> InternalTokenSigner:
    try:
        pem = settings.identity_private_key_pem()
    except OSError as exc:
        raise ConfigError(
            f"identity_private_key: cannot read {exc.filename}: {exc.strerror}"
        ) from None
    if not pem:
        raise ConfigError(
            "identity_private_key is required: the Ed25519 private key (PEM or file path) "
            "whose public half the services have as identity_public_key"
        )
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"identity_private_key: not a usable private key ({exc})") from None
    public_pem = settings.identity_key_pem()
    if public_pem:
        mine = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        theirs = serialization.load_pem_public_key(public_pem.encode()).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if mine != theirs:
            # Services would refuse every forwarded identity: fail now, not per request.
            raise ConfigError("identity_private_key does not match identity_public_key")
    try:
        return InternalTokenSigner(pem, ttl_s=settings.identity_ttl_s)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"identity_private_key: {exc}") from None


def build_app(settings: GatewaySettings) -> GatewayApp:
    if settings.embedded_op and not _is_loopback(settings.http_host):
        raise ConfigError(
            f"embedded_op signs development tokens with a local key: it serves on a loopback "
            f"address only, not {settings.http_host} (set embedded_op: false and configure "
            f"issuers to expose the gateway)"
        )
    if not settings.embedded_op and not settings.issuers:
        raise ConfigError(
            "issuers: at least one trusted issuer is required when embedded_op is off"
        )
    return GatewayApp(settings, _signer(settings))


def build(settings: GatewaySettings) -> Components:
    return Components(asgi_app=build_app(settings))


SERVICE = Service(name="gateway", settings_cls=GatewaySettings, build=build)


def main() -> None:
    run_service(SERVICE)
