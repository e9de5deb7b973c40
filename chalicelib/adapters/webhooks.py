"""Where a webhook may go, and the POST that takes it there. A URL is judged by every address its host
resolves to (no private, loopback, link-local or reserved address: no SSRF into the VPC or the instance
metadata), at job creation and again at delivery, and the POST connects to the very address judged,
so a DNS answer that changes in between (rebinding) cannot redirect it."""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

# host, port -> the addresses it resolves to (an injectable stand-in for DNS in tests)
Resolver = Callable[[str, int], list[str]]
MAX_URL_LENGTH = 2048


class UnsafeWebhook(ValueError):
    """The URL may not be called: the text says why."""


class WebhookFailed(Exception):
    """The receiver could not be reached or did not answer 2xx; worth retrying later."""


def system_resolver(host: str, port: int) -> list[str]:
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise UnsafeWebhook(f"the webhook's host {host!r} does not resolve: {error}") from None
    return sorted({str(answer[4][0]) for answer in answers})


@dataclass(frozen=True)
class Target:
    """A URL that passed the policy, with the address the POST must connect to."""

    scheme: str
    host: str
    port: int
    path: str
    address: str


@dataclass(frozen=True)
class WebhookPolicy:
    """`allow_loopback` is the local stack's: http and https to loopback addresses only (the caller's
    own machine); private and link-local addresses stay refused there too."""

    resolver: Resolver = system_resolver
    allow_loopback: bool = False

    def check(self, url: str) -> Target:
        """The URL's target, or UnsafeWebhook saying what is wrong with it."""
        if len(url) > MAX_URL_LENGTH:
            raise UnsafeWebhook(f"the webhook URL is longer than {MAX_URL_LENGTH} characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as error:
            raise UnsafeWebhook(f"the webhook URL is not valid: {error}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("https", "http") or not parts.hostname:
            raise UnsafeWebhook("the webhook URL must be https://HOST/...")
        if parts.username is not None or parts.password is not None:
            raise UnsafeWebhook("the webhook URL must not hold a user name or password")
        host = parts.hostname
        port = port or (443 if scheme == "https" else 80)
        addresses = [host] if _is_address(host) else self.resolver(host, port)
        if not addresses:
            raise UnsafeWebhook(f"the webhook's host {host!r} does not resolve")
        loopback = [_is_loopback(address) for address in addresses]
        if self.allow_loopback and all(loopback):
            return Target(scheme, host, port, _path(parts.path, parts.query), addresses[0])
        if scheme != "https":
            raise UnsafeWebhook("the webhook URL must be https")
        for address in addresses:
            if not _is_public(address):
                raise UnsafeWebhook(
                    f"the webhook's host {host!r} resolves to {address}, which is not a public address "
                    "(private, loopback, link-local and reserved addresses are refused)"
                )
        return Target(scheme, host, port, _path(parts.path, parts.query), addresses[0])


def _path(path: str, query: str) -> str:
    return (path or "/") + (f"?{query}" if query else "")


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 zone (fe80::1%eth0) names no other address
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_address(text: str) -> bool:
    try:
        _address(text)
    except ValueError:
        return False
    return True


def _is_loopback(text: str) -> bool:
    try:
        return _address(text).is_loopback
    except ValueError:
        return False


def _is_public(text: str) -> bool:
    try:
        address = _address(text)
    except ValueError:
        return False
    return address.is_global and not address.is_multicast


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to the judged address, with the URL's host for SNI and the certificate check."""

    def __init__(self, target: Target, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=context)
        self._address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Plain HTTP to the judged (loopback) address: the local stack's receivers."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class WebhookSender:
    """POSTs a body to a webhook URL after judging it by the policy; a short timeout, no redirects."""

    def __init__(self, policy: WebhookPolicy, *, timeout_s: float = 5.0, context: ssl.SSLContext | None = None) -> None:
        self.policy = policy
        self.timeout_s = timeout_s
        self._context = context or ssl.create_default_context()

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """The receiver's status (2xx); UnsafeWebhook for a URL the policy refuses now, WebhookFailed for
        a network error or another status (a redirect is not followed: it could lead anywhere)."""
        target = self.policy.check(url)
        connection: http.client.HTTPConnection
        if target.scheme == "https":
            connection = _PinnedHTTPSConnection(target, self.timeout_s, self._context)
        else:
            connection = _PinnedHTTPConnection(target, self.timeout_s)
        try:
            connection.request(
                "POST",
                target.path,
                body=body,
                headers={"Content-Type": "application/json", "User-Agent": "handpipe-webhooks", **headers},
            )
            response = connection.getresponse()
            response.read(64 * 1024)
            status = response.status
        except (OSError, http.client.HTTPException) as error:
            raise WebhookFailed(f"POST {target.host}:{target.port} failed: {error}") from error
        finally:
            connection.close()
        if not 200 <= status < 300:
            raise WebhookFailed(f"POST {target.host}:{target.port} answered {status}")
        return status
