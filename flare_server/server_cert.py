"""The server's certificate and key as served to new connections, rotated without a restart.

Theory of operation. Both endpoints are bound with gRPC's *dynamic* server credentials:
grpc core asks a fetch callback for a new certificate configuration at each new TLS
handshake, and the callback answers ``None`` (keep the one you have) until
:meth:`ServerCertificate.reload` has accepted a new pair. Connections already open keep
the certificate they were made with; new ones get the new one. ``reload`` re-reads the
kit's ``startup/server.crt`` and ``server.key`` (SIGHUP, after a re-provisioned server
kit's ``startup/`` files were copied over this kit's) and takes them only when the key is
0600 and belongs to the certificate, the certificate is a valid server certificate issued
directly by the project root in force, and the kit's ``rootCA.pem`` is still that root;
on any problem it logs an error naming the file and keeps serving the old pair. Each
credentials object (one per port) remembers which generation it last handed to grpc, so
every port picks up a rotation once.
"""

from __future__ import annotations

import logging
import threading

import grpc
from cryptography import x509

from flare_protocol import errors
from flare_protocol.expiry import Expiry, expiry_of
from flare_protocol.kit import Kit
from flare_protocol.preflight import check_kit

__all__ = ["ServerCertificate"]

log = logging.getLogger("flare_server")


class ServerCertificate:
    """The certificate new connections see; :meth:`reload` swaps it for the kit's current one."""

    def __init__(self, kit: Kit, root: x509.Certificate) -> None:
        self.kit = kit
        self.root = root
        self._root_pem = kit.root_ca_path.read_bytes()
        cert, pair = self._read()
        self.cert = cert
        self._lock = threading.Lock()
        #: (generation, configuration), replaced as one value so the callback reads a pair.
        self._current = (0, self._config(pair))

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    def expiry(self) -> Expiry:
        return expiry_of("server certificate", self.cert)

    def credentials(self) -> grpc.ServerCredentials:
        """New dynamic credentials for one port (each port tracks rotations by itself)."""
        generation, initial = self._current
        seen = [generation]

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            current_generation, config = self._current
            if current_generation == seen[0]:
                return None
            seen[0] = current_generation
            return config

        # The stub says the callback returns a configuration; grpc takes None as "keep it".
        return grpc.dynamic_ssl_server_credentials(
            initial,
            fetch,  # type: ignore[arg-type]
            require_client_authentication=True,
        )

    def reload(self) -> bool:
        """Serve the kit's current certificate and key to new connections; True if it
        changed. A certificate or key that is not usable is logged (naming the file) and
        the one in use stays."""
        try:
            cert, pair = self._read()
        except errors.FlareError as exc:
            log.error(
                "server certificate not rotated, new connections keep serial %x: %s",
                self.serial,
                exc,
            )
            return False
        if cert.serial_number == self.serial:
            log.info("server certificate unchanged (serial %x)", self.serial)
            return False
        with self._lock:
            old = self.serial
            self.cert = cert
            self._current = (self._current[0] + 1, self._config(pair))
        log.info(
            "server certificate rotated: new connections get serial %x (was %x), valid until %s",
            cert.serial_number,
            old,
            cert.not_valid_after_utc.isoformat(),
        )
        return True

    def _config(self, pair: tuple[bytes, bytes]) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=self._root_pem)

    def _read(self) -> tuple[x509.Certificate, tuple[bytes, bytes]]:
        """The kit's certificate and its (key, cert) PEMs, checked.

        Raises:
            KitError (a subclass naming the file).
        """
        kit = self.kit
        root_path = kit.root_ca_path
        try:
            root_pem = root_path.read_bytes()
            root = x509.load_pem_x509_certificate(root_pem)
        except (OSError, ValueError) as exc:
            raise errors.KitError(f"{root_path}: cannot read the root CA: {exc}") from None
        if root != self.root:
            raise errors.CertificateNotTrusted(
                f"{root_path} is not the project root CA the server runs with "
                f"({self.root.subject.rfc4514_string()}): a new root needs a restart",
                path=str(root_path),
            )
        cert = check_kit(kit, verify_signature=False)  # key 0600, key matches, issued, dates
        key_pem, cert_pem = kit.key_path.read_bytes(), kit.cert_path.read_bytes()
        if x509.load_pem_x509_certificate(cert_pem) != cert:
            raise errors.KitError(
                f"{kit.cert_path} changed while it was read; copy the files, then signal again",
                path=str(kit.cert_path),
            )
        return cert, (key_pem, cert_pem)
