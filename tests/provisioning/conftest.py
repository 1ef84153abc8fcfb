"""Fixtures of the provisioning tests."""

from __future__ import annotations

import pytest

from provisioning import ProvisionResult
from tests.kit_factory import foreign_project


@pytest.fixture(scope="session")
def foreign(
    provisioned: ProvisionResult, tmp_path_factory: pytest.TempPathFactory
) -> ProvisionResult:
    """The same participants provisioned as another project, with another CA."""
    return foreign_project(provisioned, tmp_path_factory.mktemp("foreign"))
