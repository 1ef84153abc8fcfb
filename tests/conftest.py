"""Shared fixtures: a project provisioned once per test session by our own provisioning."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

if TYPE_CHECKING:
    from provisioning import ProvisionResult

TEST_PROJECT_YML = """\
api_version: 3
name: testproj
description: project used by the test suite
participants:
  - name: localhost
    type: server
    org: nvidia
    fed_learn_port: 8102
    admin_port: 8103
    host_names: [127.0.0.1]
  - name: site-1
    type: client
    org: org_a
  - name: site-2
    type: client
    org: org_b
  - name: admin@org_a.com
    type: admin
    org: org_a
    role: project_admin
  - name: lead@org_a.com
    type: admin
    org: org_a
    role: lead
  - name: lead@org_b.com
    type: admin
    org: org_b
    role: lead
  - name: orgadmin@org_a.com
    type: admin
    org: org_a
    role: org_admin
  - name: member@org_b.com
    type: admin
    org: org_b
    role: member
"""

# Property-based tests (tests/*/test_fuzz_*.py, docs/security.md "Fuzzing"). ``ci``, the
# default, keeps each property to a few dozen examples so that all of them together cost
# seconds; ``fuzz`` (``make fuzz``) runs ``FUZZ_EXAMPLES`` (default 1000) per property. No
# deadline: the 2-core VM shared by several suites makes per-example timing noise.
settings.register_profile(
    "ci",
    max_examples=60,
    # The same examples every run: CI must not fail on an input a new random draw finds
    # (that is `make fuzz`'s job; what it finds becomes an @example).
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "1000")),
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C must work in the processes the tests start and interrupt with SIGINT. A suite
    started in the background by a shell without job control (``cmd &`` in a script)
    inherits SIGINT *ignored*, and so would every child (Python then installs no
    KeyboardInterrupt handler): give the test process Python's own handler back."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def project_yml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("project") / "project.yml"
    path.write_text(TEST_PROJECT_YML)
    return path


@pytest.fixture(scope="session")
def provisioned(project_yml: Path, tmp_path_factory: pytest.TempPathFactory) -> ProvisionResult:
    """The test project provisioned once by our own provisioning (a ProvisionResult).

    Read-only for tests: copy a kit (tests/kit_factory.py) before changing anything.
    """
    from provisioning import provision

    return provision(project_yml, tmp_path_factory.mktemp("workspace"))


@pytest.fixture(scope="session", autouse=True)
def _no_ipc_folder_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every job's IPC folder (in the temporary directory, recorded by a link in the job's
    folder) is gone when the suite ends: the suite leaves no ``flare-ipc-*`` behind."""
    yield
    from flare_site.executors.base import IPC_RECORD

    base = tmp_path_factory.getbasetemp()
    left = [p for p in base.rglob(IPC_RECORD) if p.is_symlink() and p.resolve().is_dir()]
    assert not left, f"IPC folders left behind: {[str(p.resolve()) for p in left]}"


@pytest.fixture(autouse=True)
def _logging_left_as_found() -> Iterator[None]:
    """A test that leaves the admin library's logger changed (its level or handlers, e.g.
    ``new_secure_session(debug=True)`` outside ``caplog.at_level``) fails, and the change
    is undone, so that it cannot turn DEBUG on for every later test."""
    logger = logging.getLogger("flare_admin")
    level, handlers = logger.level, list(logger.handlers)
    yield
    left = (logger.level, list(logger.handlers))
    logger.setLevel(level)
    for handler in left[1]:
        if handler not in handlers:
            logger.removeHandler(handler)
    assert left == (level, handlers), f"the test left the flare_admin logger at {left}"


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    """After a failure, the line that replays this run's random test order."""
    seed = getattr(config.option, "randomly_seed", None)
    if exitstatus != 0 and isinstance(seed, int):
        terminalreporter.write_line(
            f"tests ran in random order: replay it with the same arguments and "
            f"--randomly-seed={seed}"
        )
