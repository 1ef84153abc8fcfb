"""The O_DIRECT fallbacks of DirectWriter, with refusals made by the kernel itself.

The kernel refuses O_DIRECT at open for a file that has no direct I/O (a character device
such as /dev/null: EINVAL), and refuses a direct write at an offset that is not aligned
to the file system's block (EINVAL on ext4, xfs, btrfs). Both are real refusals, not
mocks; the writer must fall back to ordinary writes and keep every byte.
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from flare_protocol._direct_io import BLOCK, DirectWriter, replace_file

pytestmark = pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="the OS has no O_DIRECT")


def _refuses_unaligned_direct_writes(folder: Path) -> bool:
    probe = folder / ".probe"
    probe.write_bytes(b"x" * 100)
    fd = os.open(probe, os.O_WRONLY | os.O_APPEND | os.O_DIRECT)
    try:
        import mmap

        block = mmap.mmap(-1, 4096)
        try:
            os.write(fd, block)
        except OSError as exc:
            return exc.errno == errno.EINVAL
        finally:
            block.close()
        return False
    finally:
        os.close(fd)
        probe.unlink()


def test_a_file_that_refuses_o_direct_at_open_is_written_normally() -> None:
    # A character device has no direct I/O: open(O_DIRECT) fails with EINVAL.
    with pytest.raises(OSError) as info:
        os.close(os.open(os.devnull, os.O_WRONLY | os.O_DIRECT))
    assert info.value.errno == errno.EINVAL
    writer = DirectWriter(os.devnull, 0)
    assert writer.direct is False
    assert writer.write(b"x" * (BLOCK + 5)) == BLOCK + 5
    writer.finish(fsync=False)
    assert writer.closed and writer.size == BLOCK + 5


def test_a_file_system_that_refuses_a_direct_write_gets_the_bytes_written_normally(
    tmp_path: Path,
) -> None:
    if not _refuses_unaligned_direct_writes(tmp_path):
        pytest.skip(f"the file system of {tmp_path} accepts unaligned direct writes")
    path = tmp_path / "spool.bin"
    path.write_bytes(b"h" * 100)  # appending at offset 100: not block-aligned
    data = random.Random(7).randbytes(2 * BLOCK + 321)
    writer = DirectWriter(path, os.O_APPEND)
    assert writer.direct is True  # the open was accepted; the first write is refused
    writer.write(data)
    writer.finish()
    assert writer.direct is False
    assert path.read_bytes() == b"h" * 100 + data


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs tmpfs at /dev/shm")
@pytest.mark.parametrize("size", [0, 4097, BLOCK, 3 * BLOCK + 12_345])
def test_a_writer_on_tmpfs_keeps_every_byte(size: int) -> None:
    # tmpfs refused O_DIRECT before Linux 6.6 and accepts it since: either way, same bytes.
    target = Path("/dev/shm") / f"flare-test-{os.getpid()}-{size}.npz"
    data = random.Random(size).randbytes(size)
    try:
        replace_file(target, data)
        assert target.read_bytes() == data
    finally:
        target.unlink(missing_ok=True)
