"""A stand-in for the router's signing key: signs ``auth_data`` as Vast's router does."""

from __future__ import annotations

import base64
from typing import Any

import attrs
import trio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .._auth import AuthData, message_2024, message_2025


@attrs.frozen(eq=False)
class RouterSigner:
    """Signs ``auth_data`` the way Vast's router does (for the stand-in autoscaler and tests).

    Args:
        private_key: the RSA key to sign with.
    """

    private_key: rsa.RSAPrivateKey

    @classmethod
    def generate(cls) -> RouterSigner:
        """A signer with a new RSA-2048 key (blocks for ~100 ms; see :meth:`create`)."""
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    async def create(cls) -> RouterSigner:
        """A signer with a new RSA-2048 key, generated in a thread so the loop keeps running."""
        return await trio.to_thread.run_sync(cls.generate)

    def public_pem(self) -> bytes:
        """The public key, PEM-encoded (what ``/pubkey/`` serves)."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def _signature(self, message: bytes) -> str:
        raw = self.private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return base64.b64encode(raw).decode("ascii")

    def sign(self, *, cost: object, endpoint: object, reqnum: int, url: str) -> dict[str, Any]:
        """A complete ``auth_data`` signed over the 2024 message.

        Returns:
            ``{"signature", "cost", "endpoint", "reqnum", "url"}`` with the values as given.
        """
        auth = AuthData(signature="", cost=cost, endpoint=endpoint, reqnum=reqnum, url=url)
        return {"signature": self._signature(message_2024(auth)), **_unsigned(auth)}

    def sign_2025(
        self, url: str, *, cost: object = 0, endpoint: object = "", reqnum: int = 0
    ) -> dict[str, Any]:
        """A complete ``auth_data`` signed over the 2025 message (the URL only)."""
        auth = AuthData(signature="", cost=cost, endpoint=endpoint, reqnum=reqnum, url=url)
        return {"signature": self._signature(message_2025(auth)), **_unsigned(auth)}


def _unsigned(auth: AuthData) -> dict[str, Any]:
    return {"cost": auth.cost, "endpoint": auth.endpoint, "reqnum": auth.reqnum, "url": auth.url}
