"""The wire contract: gRPC stubs, the startup-kit format, identities and the error tree."""

from flare_protocol.errors import FlareError

__version__ = "0.1.0"
__all__ = ["FlareError", "__version__"]
