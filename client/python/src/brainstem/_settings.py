"""Where a client finds its endpoint and identity: arguments, then BRAINSTEM_* environment variables
(the names brainstemctl reads), then the dev state directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Union

from .errors import ConfigurationError

PemSource = Union[str, bytes, "os.PathLike[str]"]

DEFAULT_ENDPOINT = "127.0.0.1:50051"
DEFAULT_STATE_DIR = ".brainstem-dev"
DEFAULT_TIMEOUT_SECONDS = 10.0

ENV_ENDPOINT = "BRAINSTEM_ENDPOINT"
ENV_STATE_DIR = "BRAINSTEM_STATE_DIR"
ENV_CA = "BRAINSTEM_CA"
ENV_CERT = "BRAINSTEM_CERT"
ENV_KEY = "BRAINSTEM_KEY"
ENV_SERVER_NAME = "BRAINSTEM_SERVER_NAME"
ENV_TIMEOUT = "BRAINSTEM_TIMEOUT_SECONDS"


@dataclass(frozen=True)
class Settings:
    endpoint: str
    ca: bytes
    cert: bytes
    key: bytes
    server_name: Optional[str]
    timeout: float


def _pick(arg, env_name):
    if arg is not None:
        return arg, "argument"
    value = os.environ.get(env_name)
    if value:
        return value, f"${env_name}"
    return None, None


def _read(what: str, source: PemSource, origin: str, hint: str) -> bytes:
    if isinstance(source, bytes):
        return source
    path = os.fspath(source)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigurationError(
            f"brainstem: no {what} at {os.path.abspath(path)} (from {origin}); {hint}"
        ) from None
    except OSError as err:
        raise ConfigurationError(f"brainstem: cannot read the {what} {path} (from {origin}): {err.strerror}") from None


def resolve(
    endpoint: Optional[str] = None,
    *,
    ca: Optional[PemSource] = None,
    cert: Optional[PemSource] = None,
    key: Optional[PemSource] = None,
    state_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
    server_name: Optional[str] = None,
    timeout: Optional[float] = None,
) -> Settings:
    endpoint, _ = _pick(endpoint, ENV_ENDPOINT)
    endpoint = endpoint or DEFAULT_ENDPOINT
    for scheme in ("https://", "http://", "dns:///"):
        if endpoint.startswith(scheme):
            endpoint = endpoint[len(scheme):]
    endpoint = endpoint.rstrip("/")
    if not endpoint or ":" not in endpoint:
        raise ConfigurationError(f"brainstem: endpoint {endpoint!r} is not host:port")

    state, state_origin = _pick(state_dir, ENV_STATE_DIR)
    if state is None:
        state, state_origin = DEFAULT_STATE_DIR, "the default state dir"
    pki = os.path.join(os.fspath(state), "pki")
    hint = (
        "pass ca=/cert=/key= to connect(), set BRAINSTEM_CA, BRAINSTEM_CERT and BRAINSTEM_KEY, or point "
        f"state_dir= / BRAINSTEM_STATE_DIR at a dev daemon's state directory (looked in {os.path.abspath(pki)}; "
        "`brainstemd --dev` creates it on its first start)"
    )

    ca_src, ca_origin = _pick(ca, ENV_CA)
    if ca_src is None:
        ca_src, ca_origin = os.path.join(pki, "ca.pem"), state_origin
    cert_src, cert_origin = _pick(cert, ENV_CERT)
    key_src, key_origin = _pick(key, ENV_KEY)
    if (cert_src is None) != (key_src is None):
        raise ConfigurationError("brainstem: a client certificate and its key go together: give both cert and key, or neither")
    if cert_src is None:
        cert_src, cert_origin = os.path.join(pki, "admin.pem"), state_origin
        key_src, key_origin = os.path.join(pki, "admin.key"), state_origin

    server, _ = _pick(server_name, ENV_SERVER_NAME)
    if timeout is None:
        raw = os.environ.get(ENV_TIMEOUT)
        try:
            timeout = float(raw) if raw else DEFAULT_TIMEOUT_SECONDS
        except ValueError:
            raise ConfigurationError(f"brainstem: ${ENV_TIMEOUT}={raw!r} is not a number of seconds") from None
    if timeout <= 0:
        raise ConfigurationError(f"brainstem: timeout must be positive, got {timeout}")

    return Settings(
        endpoint=endpoint,
        ca=_read("CA certificate", ca_src, ca_origin, hint),
        cert=_read("client certificate", cert_src, cert_origin, hint),
        key=_read("client key", key_src, key_origin, hint),
        server_name=server,
        timeout=float(timeout),
    )
