"""A certificate authority of its own, standing in for Vast's TLS root.

Vast's client trusts one extra root certificate, which it downloads from the console before its
first request, and verifies every worker's certificate against it. The stand-in serves the root
of a :class:`LocalCA` instead, so a test can run a worker with TLS on 127.0.0.1 (a certificate
from :meth:`LocalCA.issue`) and Vast's client still verifies it, with no internet.

The keys are ECDSA P-256: generating one takes well under a millisecond, so a CA can be made on
the event loop, unlike an RSA key.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["IssuedCertificate", "LocalCA"]

_CLOCK_SKEW = datetime.timedelta(minutes=5)
"""Certificates are valid from a little before now, for a peer whose clock runs behind."""


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


@attrs.frozen(kw_only=True)
class IssuedCertificate:
    """A server certificate and its private key, both PEM-encoded.

    Attributes:
        certificate_pem: the certificate (the leaf only: the CA is the client's root).
        key_pem: its private key, unencrypted PKCS#8.
    """

    certificate_pem: bytes
    key_pem: bytes

    def write(self, directory: Path, name: str = "server") -> tuple[Path, Path]:
        """Write ``NAME.crt`` and ``NAME.key`` (owner-only) into ``directory``.

        Returns:
            The certificate's path and the key's, e.g. for the worker's ``ssl_certfile`` and
            ``ssl_keyfile``.
        """
        directory.mkdir(parents=True, exist_ok=True)
        cert_path = directory / f"{name}.crt"
        key_path = directory / f"{name}.key"
        cert_path.write_bytes(self.certificate_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(self.key_pem)
        return cert_path, key_path


@attrs.frozen(kw_only=True, eq=False)
class LocalCA:
    """A self-signed root CA that issues server certificates for local addresses.

    Its certificate is a well-formed CA (basic constraints, key usage with ``keyCertSign``, key
    identifiers), so it verifies under strict X.509 checking too.

    Args:
        key: the CA's private key.
        certificate: the CA's self-signed certificate.
    """

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def generate(cls, *, name: str = "pyworker stand-in root CA", days: int = 30) -> LocalCA:
        """A new CA valid for ``days`` days, named ``name``."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(key=key, certificate=certificate)

    def root_pem(self) -> bytes:
        """The CA's certificate, PEM-encoded (what the stand-in serves as the TLS root)."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def sign_request(self, csr_pem: bytes, *, days: int = 30) -> bytes:
        """Sign a certificate signing request, as Vast's console does for an instance's start
        script (``POST /api/v0/sign_cert/``): the certificate carries the request's subject,
        public key and subject alternative names, and is issued by this CA.

        Args:
            csr_pem: the PEM-encoded request (what ``openssl req -new`` writes).
            days: how long the certificate is valid.

        Returns:
            The certificate, PEM-encoded.

        Raises:
            ValueError: the request is not PEM, or its signature does not verify.
        """
        csr = x509.load_pem_x509_csr(csr_pem)
        if not csr.is_signature_valid:
            raise ValueError("the request's signature does not verify")
        now = datetime.datetime.now(datetime.UTC)
        ca_key_id = self.certificate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value
        builder = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(self.certificate.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id), False
            )
        )
        try:
            names = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            pass
        else:
            builder = builder.add_extension(names.value, critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        return certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, *hosts: str, days: int = 30) -> IssuedCertificate:
        """A server certificate for ``hosts`` (IP addresses or DNS names), signed by this CA.

        Args:
            *hosts: the names a client may reach the server by; the first is also its common
                name. Default: ``127.0.0.1``.
            days: how long it is valid.
        """
        names = hosts or ("127.0.0.1",)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        ca_key_id = self.certificate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(x509.SubjectAlternativeName([_host_name(h) for h in names]), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id), False
            )
            .sign(self.key, hashes.SHA256())
        )
        return IssuedCertificate(
            certificate_pem=certificate.public_bytes(serialization.Encoding.PEM),
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
