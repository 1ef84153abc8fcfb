"""The one exception tree: every class in it and its docstring drawing, and the data each
class declares (visible to type checkers)."""

from __future__ import annotations

import errno
import inspect
import re
import typing

import pytest

from flare_protocol import errors

CLASSES = {
    name: cls
    for name, cls in vars(errors).items()
    if inspect.isclass(cls) and issubclass(cls, errors.FlareError)
}


def test_every_class_is_drawn_in_the_module_docstring_under_its_base():
    doc = errors.__doc__ or ""
    drawn = set(re.findall(r"[├└]── (\w+)", doc)) | {"FlareError"}
    assert drawn == set(CLASSES)
    assert len(CLASSES) == len(set(CLASSES))


def test_frame_and_blob_errors_belong_to_the_tree():
    from flare_site.blobs import BlobError
    from flare_site.client._ipc import FrameError

    assert BlobError is errors.BlobError and FrameError is errors.FrameError
    assert issubclass(BlobError, errors.FlareError) and issubclass(FrameError, errors.FlareError)


@pytest.mark.parametrize(
    ("cls", "attribute", "hint"),
    [
        (errors.APIError, "job_id", str | None),
        (errors.JobNotDone, "status", str | None),
        (errors.JobTimeout, "status", str | None),
        (errors.InvalidTarget, "site", str | None),
        (errors.InvalidArgumentError, "path", str | None),
        (errors.KitError, "path", str | None),
        (errors.NoConnection, "address", str | None),
        (errors.InvalidJobDefinition, "size", int | None),
        (errors.BlobError, "retryable", bool),
        (errors.LocalIOError, "path", str | None),
        (errors.ExecutionError, "returncode", int | None),
    ],
)
def test_each_class_declares_the_data_it_carries(cls, attribute, hint):
    assert typing.get_type_hints(cls)[attribute] == hint
    assert getattr(cls("not set"), attribute) in (None, False)  # a declared default


def test_the_constructor_still_takes_any_data_as_keywords():
    exc = errors.JobNotDone("job j is RUNNING", job_id="j", status="RUNNING", extra=1)
    assert (exc.job_id, exc.status, exc.extra) == ("j", "RUNNING", 1)  # type: ignore[attr-defined]
    assert exc.details == {"job_id": "j", "status": "RUNNING", "extra": 1}


def test_a_local_io_error_names_the_path_and_the_os_error():
    cause = OSError(errno.ENOSPC, "No space left on device", "/data/x.part")
    exc = errors.LocalIOError.of(cause, "write the result of job j into", "/data", job_id="j")
    assert str(exc) == "cannot write the result of job j into /data: No space left on device"
    assert (exc.path, exc.job_id, exc.errno, exc.filename) == (
        "/data",
        "j",
        errno.ENOSPC,
        "/data/x.part",
    )
    assert isinstance(exc, OSError) and isinstance(exc, errors.APIError)
