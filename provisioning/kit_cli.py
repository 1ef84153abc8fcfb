"""``flare kit verify KIT_DIR [--ca-fingerprint SHA256]``: check a startup kit's signature."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flare_protocol.errors import KitError
from flare_protocol.kit import ROOT_CA, STARTUP
from flare_protocol.signature import ca_fingerprint, verify_kit


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="flare kit", description="Check a startup kit.")
    sub = ap.add_subparsers(dest="command", required=True)
    verify = sub.add_parser(
        "verify",
        help="check that startup/ is exactly what the project CA signed",
        description="Check that the kit's startup/ folder is exactly what the project CA "
        "signed. Pass the root CA fingerprint you received out of band to also prove "
        "that the CA is your project's.",
    )
    verify.add_argument("kit_dir", type=Path, metavar="KIT_DIR")
    verify.add_argument(
        "--ca-fingerprint",
        metavar="SHA256",
        help="expected root CA SHA-256 fingerprint (colons and case ignored)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run ``flare kit ...``; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        verify_kit(args.kit_dir, args.ca_fingerprint)
    except ValueError as exc:
        print(f"error: --ca-fingerprint: {exc}", file=sys.stderr)
        return 2
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    fp = ca_fingerprint((args.kit_dir / STARTUP / ROOT_CA).read_bytes())
    checked = (
        "matches the given fingerprint"
        if args.ca_fingerprint
        else "NOT checked against a fingerprint: pass --ca-fingerprint"
    )
    print(f"ok: {args.kit_dir} is intact and signed by root CA {fp} ({checked})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
