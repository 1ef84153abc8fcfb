"""``flare provision``: create or extend a project from its project.yml."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from flare_protocol.errors import FlareError
from flare_protocol.identity import ParticipantType
from flare_protocol.kit import STARTUP, detect_type
from flare_protocol.kit_workspace import WORKSPACE, earlier_kits
from provisioning.certs import DEFAULT_CA_DAYS, DEFAULT_CERT_DAYS, KEY_TYPES
from provisioning.provisioner import ProvisionResult, provision

DEFAULT_WORKSPACE = "startup_kits"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="flare provision",
        description="Create the project's root CA (first run), issue certificates and write "
        "signed startup kits into <workspace>/<project>/prod_NN/.",
    )
    ap.add_argument(
        "-p",
        "--project-file",
        default="project.yml",
        type=Path,
        help="the project file (NVIDIA FLARE's format; default: project.yml)",
    )
    ap.add_argument(
        "-w",
        "--workspace",
        default=DEFAULT_WORKSPACE,
        type=Path,
        help=f"where <project>/state and prod_NN go (default: {DEFAULT_WORKSPACE}/)",
    )
    ap.add_argument(
        "--key-type",
        choices=KEY_TYPES,
        default="ec-p256",
        help="key type of the CA (first run) and of new keys (default: ec-p256)",
    )
    ap.add_argument(
        "--ca-days",
        type=int,
        default=DEFAULT_CA_DAYS,
        help=f"root CA validity in days, first run only (default: {DEFAULT_CA_DAYS})",
    )
    ap.add_argument(
        "--cert-days",
        type=int,
        default=DEFAULT_CERT_DAYS,
        help=f"validity of new certificates in days (default: {DEFAULT_CERT_DAYS}; a few "
        "days give short-lived certificates, e.g. to try the 30-day expiry warnings)",
    )
    ap.add_argument(
        "--ca-passphrase-env",
        metavar="VAR",
        help="encrypt the CA key and the stored participant keys with the "
        "passphrase in environment variable VAR (never on the command line)",
    )
    ap.add_argument(
        "--revoke",
        action="append",
        default=[],
        metavar="NAME",
        help="revoke NAME's certificate and issue it a new key and kit "
        "(repeatable); removing a participant from project.yml also revokes it",
    )
    ap.add_argument("-q", "--quiet", action="store_true", help="print only the fingerprint")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run ``flare provision``; returns the exit code."""
    args = _parser().parse_args(argv)
    passphrase: bytes | None = None
    if args.ca_passphrase_env:
        value = os.environ.get(args.ca_passphrase_env)
        if not value:
            print(
                f"error: environment variable {args.ca_passphrase_env} is not set or empty "
                "(it must hold the CA passphrase)",
                file=sys.stderr,
            )
            return 2
        passphrase = value.encode()
    try:
        result = provision(
            args.project_file,
            args.workspace,
            key_type=args.key_type,
            ca_days=args.ca_days,
            cert_days=args.cert_days,
            ca_passphrase=passphrase,
            revoke=args.revoke,
        )
    except FlareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written under a final name", file=sys.stderr)
        return 130
    if args.quiet:
        print(result.ca_fingerprint)
        return 0
    for notice in result.notices:
        print(f"notice: {notice}")
    print(f"project {result.project}: wrote {len(result.kits)} kits to {result.prod_dir}")
    print(
        f"  issued {len(result.issued)}, reused {len(result.reused)}, "
        f"revoked {len(result.revoked)}"
        + (f" ({', '.join(result.revoked)})" if result.revoked else "")
    )
    print(f"root CA SHA-256 fingerprint: {result.ca_fingerprint}")
    print("  send it to every participant by another channel; they check their kit with")
    print("  flare kit verify KIT_DIR --ca-fingerprint <fingerprint>")
    if result.revoked:
        print(revocation_next_step(result))
    return 0


def revocation_next_step(result: ProvisionResult) -> str:
    """What makes a revocation effective on the running server: the lines to print."""
    server = next(
        (kit for kit in result.kits.values() if detect_type(kit) is ParticipantType.SERVER),
        None,
    )
    if server is None:  # pragma: no cover - a project always has its server
        return ""
    earlier = earlier_kits(server)  # the one in use: most likely the newest one started
    running = next((k for k in earlier if (k / WORKSPACE).is_dir()), next(iter(earlier), None))
    source = shlex.quote(str(server / STARTUP))
    target = shlex.quote(str(running / STARTUP)) if running else "<the server's kit>/startup"
    crl = shlex.quote(str(result.crl_path)) if result.crl_path else "<state>/revocations.crl"
    return "\n".join(
        [
            "next step: the running server still accepts the revoked certificate(s) until it",
            f"  gets the new revocation list (CRL number {result.crl_number}). A project_admin",
            "  sends it from the admin shell (the server checks the CA's signature, keeps it",
            "  in its workspace and drops the revoked peers' open streams at once):",
            f"    update_revocations {crl}",
            "  Or copy the new server kit's startup files over those of the kit the server runs",
            "  from (all of them: they are signed together), e.g.",
            f"    cp -p {source}/* {target}/",
            "  then tell the server to reload them (it logs 'revocation list reloaded from ...:",
            "  N revoked serial(s)', drops the revoked peers' open streams and serves a new",
            "  server certificate, if the kit has one, to new connections):",
            "    kill -HUP <pid of flare server start>   (the pid is in its 'listening' log line)",
            f"  Or restart the server from {server} with --workspace <its current workspace>.",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
