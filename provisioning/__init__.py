"""Provisioning: project.yml, the project CA, certificates and signed startup kits.

``flare provision`` and ``flare kit verify`` are thin command lines over this API.
"""

from __future__ import annotations

from provisioning.certs import KEY_TYPES
from provisioning.project import Participant, Project, load_project
from provisioning.provisioner import ProvisionResult, provision

__all__ = [
    "KEY_TYPES",
    "Participant",
    "Project",
    "ProvisionResult",
    "load_project",
    "provision",
]
