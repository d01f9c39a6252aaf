"""HTTPS for the sandbox: a certificate authority of its own and a server certificate it signs.

Every real service speaks HTTPS only, and some clients (simple-salesforce) build ``https://``
URLs whatever they are given. ``ensure_certificates`` makes, once per state folder, a
self-signed CA and a server certificate for the loopback names and the host the sandbox binds;
a client trusts the sandbox by pointing ``REQUESTS_CA_BUNDLE`` at the trust bundle (that CA
followed by the public CAs requests trusts by default, so the same shell still reaches real
services), and a client without it is refused at the handshake, as against any unknown
certificate.
"""

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import requests.utils
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TLS_DIR = "tls"
CA_FILE = "ca.pem"
TRUST_FILE = "trust.pem"
CERT_FILE = "server.pem"
KEY_FILE = "server-key.pem"
_LOOPBACK = ("localhost", "127.0.0.1", "::1")
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")  # noqa: S104  (names, not a bind)


@dataclass(frozen=True)
class TlsFiles:
    """Where the sandbox's TLS material lives.

    Attributes:
        ca_bundle: The sandbox's own CA certificate.
        cert: The server certificate.
        key: The server certificate's private key (unencrypted, readable by its owner only).
        trust_bundle: The CA followed by requests' default public CAs (``REQUESTS_CA_BUNDLE``).
    """

    ca_bundle: Path
    cert: Path
    key: Path
    trust_bundle: Path

    def server_context(self) -> ssl.SSLContext:
        """A server-side TLS context (TLS 1.2 or later) presenting the server certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        return context


def ensure_certificates(state_dir: Path, host: str) -> TlsFiles:
    """The CA and server certificate of ``state_dir``, made when absent.

    The CA is made once and kept, so a client keeps trusting a restarted sandbox. The server
    certificate is made again when it does not name ``host`` (the sandbox now binds another
    interface) or is about to expire.
    """
    folder = Path(state_dir) / TLS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(folder / CA_FILE, folder / CERT_FILE, folder / KEY_FILE, folder / TRUST_FILE)
    names = _names(host)
    ca_key_file = folder / "ca-key.pem"
    if not (files.ca_bundle.is_file() and ca_key_file.is_file()):
        new_ca_key = ec.generate_private_key(ec.SECP256R1())
        _write_key(ca_key_file, new_ca_key)
        files.ca_bundle.write_bytes(_pem(_ca_certificate(new_ca_key)))
        files.cert.unlink(missing_ok=True)
    if not _covers(files.cert, names):
        ca_key = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{ca_key_file} is not the sandbox CA's EC key; remove {folder}")
        ca_cert = x509.load_pem_x509_certificate(files.ca_bundle.read_bytes())
        _write_key(files.key, key := ec.generate_private_key(ec.SECP256R1()))
        files.cert.write_bytes(_pem(_server_certificate(key, ca_key, ca_cert, names)))
    public = Path(requests.utils.DEFAULT_CA_BUNDLE_PATH).read_bytes()
    files.trust_bundle.write_bytes(files.ca_bundle.read_bytes() + b"\n" + public)
    return files


def _names(host: str) -> tuple[str, ...]:
    extra = () if host in _WILDCARD_HOSTS or host in _LOOPBACK else (host,)
    return (*_LOOPBACK, *extra)


def _covers(cert_file: Path, names: tuple[str, ...]) -> bool:
    if not cert_file.is_file():
        return False
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=7)
    if cert.not_valid_after_utc < soon:
        return False
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    present = {str(v) for v in alt.get_values_for_type(x509.DNSName)} | {
        str(v) for v in alt.get_values_for_type(x509.IPAddress)
    }
    return {str(_general_name(n).value) for n in names} <= present


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _builder(subject: str, issuer: x509.Name, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "finsync sandbox CA")])
    public = key.public_key()
    return (
        _builder("finsync sandbox CA", name, days=3650)
        .public_key(public)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    names: tuple[str, ...],
) -> x509.Certificate:
    public = key.public_key()
    # Strict verifiers (Python 3.13's default context) want the key identifiers and EKU.
    return (
        _builder("finsync sandbox", ca_cert.subject, days=397)
        .public_key(public)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
