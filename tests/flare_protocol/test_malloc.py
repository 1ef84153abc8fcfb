"""glibc malloc tuning: on in the daemons, off in the processes users own unless they opt in.

Each check that tunes runs in a fresh interpreter: the settings hold for a whole process,
and the test runner's own process must stay as the user would have it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flare_protocol import _malloc
from flare_site.job_cli import main as job_main
from tests.flare_admin.conftest import ADMIN
from tests.server_harness import ServerThread

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt tuning applies to glibc only",
)


def _python(code: str, tuning: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != _malloc.ENV}
    if tuning is not None:
        env[_malloc.ENV] = tuning
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@glibc_only
def test_the_daemons_tuning_is_applied_once_on_glibc() -> None:
    code = "from flare_protocol import _malloc as m; print(m.tune(), m.tune(), m.applied())"
    assert _python(code, None) == "True True True"


@pytest.mark.parametrize("tuning", [None, "0", "1"])
def test_tuning_can_be_turned_off_and_user_processes_are_tuned_only_on_request(
    tuning: str | None,
) -> None:
    code = """
        from flare_protocol import _malloc
        print(_malloc.tune_if_requested(), _malloc.applied())
    """
    on_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    expected = "True True" if tuning == "1" and on_glibc else "False False"
    assert _python(code, tuning) == expected
    off = "from flare_protocol import _malloc; print(_malloc.tune(), _malloc.applied())"
    if tuning == "0":
        assert _python(off, tuning) == "False False"


@pytest.mark.parametrize("tuning", [None, "1"])
def test_opening_a_session_leaves_the_users_malloc_alone_unless_asked(
    provisioned, tmp_path: Path, tuning: str | None
) -> None:
    code = f"""
        from flare_admin import new_secure_session
        from flare_protocol import _malloc
        with new_secure_session({ADMIN!r}, {str(provisioned.kits[ADMIN])!r},
                                server_address=ADDRESS) as session:
            session.list_jobs()
        print(_malloc.applied())
    """
    with ServerThread(provisioned.kits["localhost"], tmp_path / "ws") as server:
        out = _python(f"ADDRESS = {server.admin_address!r}\n" + textwrap.dedent(code), tuning)
    on_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert out == str(tuning == "1" and on_glibc)


@pytest.mark.parametrize("opt_in", [False, True])
def test_the_client_api_leaves_the_training_scripts_malloc_alone_unless_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opt_in: bool
) -> None:
    app = tmp_path / "app"
    (app / "config").mkdir(parents=True)
    (app / "custom").mkdir()
    config = {"executor": "script", "script": "custom/train.py"}
    (app / "config" / "config_fed_client.json").write_text(json.dumps(config))
    (app / "custom" / "train.py").write_text(
        textwrap.dedent(
            f"""
            import os
            from pathlib import Path
            import flare_site.client as flare
            from flare_protocol import _malloc

            if {opt_in!r}:  # the script's own choice (a job's env may not set FLARE_ names)
                os.environ["FLARE_MALLOC_TUNING"] = "1"
            flare.init()
            Path({str(tmp_path / "tuned.txt")!r}).write_text(str(_malloc.applied()))
            model = flare.receive()
            flare.send(flare.FLModel(params=model.params, meta={{"num_examples": 1}}))
            """
        )
    )
    monkeypatch.setenv(_malloc.ENV, "1")  # the site's own setting does not reach user code
    initial = EXAMPLES / "hello-numpy/app/models/initial_model.npz"
    argv = ["run", "train", "--path", str(app), "--input", str(initial)]
    assert job_main([*argv, "--output", str(tmp_path / "update.npz")]) == 0
    on_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert (tmp_path / "tuned.txt").read_text() == str(opt_in and on_glibc)


def _dynamic_loader() -> str | None:
    maps = Path("/proc/self/maps")
    lines = maps.read_text().splitlines() if maps.exists() else []
    return next((ln.split()[-1] for ln in lines if "/ld-linux" in ln), None)


def test_a_c_library_without_glibcs_mallopt_is_left_alone() -> None:
    assert _malloc._apply(library="libflare-no-such-library.so") is False
    loader = _dynamic_loader()  # a real library with no mallopt (and no dependencies)
    if loader is None:
        pytest.skip("no glibc dynamic loader in this process")
    assert _malloc._apply(library=loader) is False


@glibc_only
def test_a_value_glibc_refuses_makes_the_tuning_report_false() -> None:
    # M_MXFAST (1) above glibc's cap (80 * sizeof(size_t) / 4) is refused: nothing changes.
    assert _malloc._apply(settings=((1, 10_000),)) is False
