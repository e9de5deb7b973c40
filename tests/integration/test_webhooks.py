"""The webhook POST against real servers on loopback: HTTPS to the address the policy judged, with the
URL's host for SNI and the certificate check (a test CA made here), and no connection at all to a host
whose DNS answer turned private since (a resolver injected in place of DNS); and the API outside the local
stack refusing such webhooks when a job is made."""

from __future__ import annotations

import datetime
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from chalicelib.adapters.webhooks import UnsafeWebhook, WebhookFailed, WebhookPolicy, WebhookSender
from tests.support.api import Env, register

HOST = "hooks.example.test"


@dataclass
class Server:
    port: int
    seen: list[tuple[str, str | None, bytes]] = field(default_factory=list)  # path, Host header, body
    status: int = 204


def _certificate(common_name: str, issuer_key: Any, issuer: x509.Name | None, ca: bool) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
    return key, builder.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, ssl.SSLContext]]:
    folder: Path = tmp_path_factory.mktemp("tls")
    ca_key, ca = _certificate("handpipe test CA", None, None, ca=True)
    key, leaf = _certificate(HOST, ca_key, ca.subject, ca=False)
    (folder / "leaf.pem").write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = serve(ssl_file=folder / "leaf.pem")
    trusting = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    yield server, trusting


def serve(ssl_file: Path | None = None) -> Server:
    holder: list[Server] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            holder[0].seen.append((self.path, self.headers.get("Host"), body))
            self.send_response(holder[0].status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if ssl_file is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(ssl_file)
        http.socket = context.wrap_socket(http.socket, server_side=True)
    holder.append(Server(http.server_address[1]))
    threading.Thread(target=http.serve_forever, daemon=True).start()
    return holder[0]


def resolve_to(address: str) -> Any:
    def resolve(host: str, port: int) -> list[str]:
        return [address]

    return resolve


def test_https_goes_to_the_judged_address_with_the_url_s_host_for_sni_and_the_certificate(
    tls: tuple[Server, ssl.SSLContext],
) -> None:
    server, trusting = tls
    sender = WebhookSender(WebhookPolicy(resolver=resolve_to("127.0.0.1"), allow_loopback=True), context=trusting)
    assert sender.post(f"https://{HOST}:{server.port}/hook?x=1", b'{"a":1}', {"X-Test": "1"}) == 204
    assert server.seen[-1] == ("/hook?x=1", f"{HOST}:{server.port}", b'{"a":1}')
    # Another name than the certificate's fails the check: the connection is pinned, not the trust.
    with pytest.raises(WebhookFailed, match="certificate|hostname"):
        sender.post(f"https://other.example.test:{server.port}/hook", b"{}", {})
    # A CA the sender does not trust fails it too.
    untrusting = WebhookSender(WebhookPolicy(resolver=resolve_to("127.0.0.1"), allow_loopback=True))
    with pytest.raises(WebhookFailed, match="certificate"):
        untrusting.post(f"https://{HOST}:{server.port}/hook", b"{}", {})


def test_a_host_whose_dns_now_says_loopback_is_never_connected_to_outside_the_local_stack() -> None:
    server = serve()
    answers = {"hooks.example.com": "93.184.215.14"}

    def resolve(host: str, port: int) -> list[str]:
        return [answers[host]]

    policy = WebhookPolicy(resolver=resolve)
    policy.check(f"https://hooks.example.com:{server.port}/h")  # accepted when the job was made
    for address in ("127.0.0.1", "10.0.0.1", "169.254.169.254", "::1"):  # 127.0.0.1: where the receiver is
        answers["hooks.example.com"] = address
        with pytest.raises(UnsafeWebhook, match="not a public address"):
            WebhookSender(policy).post(f"https://hooks.example.com:{server.port}/h", b"{}", {})
    assert server.seen == []  # nothing reached it


def test_non_2xx_and_unreachable_receivers_are_failures_to_retry() -> None:
    server = serve()
    server.status = 500
    local = WebhookSender(WebhookPolicy(resolver=resolve_to("127.0.0.1"), allow_loopback=True), timeout_s=2)
    with pytest.raises(WebhookFailed, match="answered 500"):
        local.post(f"http://127.0.0.1:{server.port}/h", b"{}", {})
    server.status = 302  # a redirect is not followed: it could lead anywhere
    with pytest.raises(WebhookFailed, match="answered 302"):
        local.post(f"http://127.0.0.1:{server.port}/h", b"{}", {})
    with pytest.raises(WebhookFailed):
        local.post("http://127.0.0.1:9/h", b"{}", {})  # the discard port: nothing listens


def test_outside_the_local_stack_job_creation_refuses_metadata_private_and_loopback_webhooks(env: Env) -> None:
    """The API as deployed (no loopback allowance): each refused with a 400 that says why, and no job made."""
    receiver = serve()
    video = register(env)
    for url in (
        "https://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "https://10.0.0.1/hook",
        "https://[fd00::1]/hook",
        f"http://127.0.0.1:{receiver.port}/hook",
        f"https://127.0.0.1:{receiver.port}/hook",
        "https://user:secret@93.184.215.14/hook",
    ):
        status, body = env.call("POST", f"/videos/{video['id']}/jobs", {"notify": {"webhook_url": url}})
        assert (status, body["code"]) == (400, "invalid_input"), (url, body)
        assert "webhook_url is refused" in body["message"], body
    assert env.call("GET", f"/videos/{video['id']}/jobs")[1]["jobs"] == []
    assert receiver.seen == []
