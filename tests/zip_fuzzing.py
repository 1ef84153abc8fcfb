"""Hostile zip archives for the property-based tests of every archive reader (job uploads
on the server, apps on a site, results in the Session).

:func:`hostile_zips` starts from a valid archive and adds what an attacker would: entries
with names that leave the folder, symlink/device/FIFO modes, folder entries with content,
the encrypted flag, unknown compression methods, duplicates (also by case), a file used as
a folder, declared sizes that lie (huge, or smaller than the data), an end-of-directory
record announcing millions of entries; or it damages the archive's bytes.
"""

from __future__ import annotations

import io
import stat
import struct
import warnings
import zipfile
from collections.abc import Mapping

from hypothesis import strategies as st

from tests.fuzzing import hostile_names, mutated_bytes

__all__ = ["hostile_zips", "zip_bytes"]


def zip_bytes(files: Mapping[str, bytes], *, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of ``files`` (names verbatim)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _with_entry(valid: bytes, info: zipfile.ZipInfo, data: bytes) -> bytes:
    buffer = io.BytesIO(valid)
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "a") as archive:
        warnings.simplefilter("ignore")  # duplicate names are added on purpose
        archive.writestr(info, data)
    return buffer.getvalue()


def _patch_central(data: bytes, offset: int, fmt: str, value: int, *, local: int | None) -> bytes:
    """Set a field of every central-directory record (and, at ``local``, of its entry's
    local header)."""
    out = bytearray(data)
    at = out.find(b"PK\x01\x02")
    while at >= 0:
        struct.pack_into(fmt, out, at + offset, value)
        if local is not None:
            header = struct.unpack_from("<I", out, at + 42)[0]
            if out[header : header + 4] == b"PK\x03\x04":
                struct.pack_into(fmt, out, header + local, value)
        at = out.find(b"PK\x01\x02", at + 4)
    return bytes(out)


_MODES = [
    stat.S_IFLNK | 0o777,
    stat.S_IFCHR | 0o644,
    stat.S_IFBLK | 0o644,
    stat.S_IFIFO | 0o644,
    stat.S_IFSOCK | 0o644,
    stat.S_IFDIR | 0o755,
    0o170000 | 0o644,  # no such file type
    stat.S_IFREG | 0o4755,
]


@st.composite
def hostile_zips(draw: st.DrawFn, valid: bytes, top: str = "") -> bytes:
    """``valid`` bent by an attacker (``top``: the archive's top folder, with ``/``)."""
    kind = draw(
        st.sampled_from(
            ["bytes", "name", "mode", "folder", "flag", "method", "dup", "nest", "size", "count"]
        )
    )
    if kind == "bytes":
        return draw(mutated_bytes(valid))
    if kind == "name":
        name = draw(st.one_of(hostile_names, hostile_names.map(lambda n: top + n)))
        return _with_entry(valid, zipfile.ZipInfo(name), b"x")
    if kind == "mode":
        info = zipfile.ZipInfo(top + draw(st.sampled_from(["link", "app/custom/x.py", "dir"])))
        info.create_system = draw(st.sampled_from([0, 3]))
        info.external_attr = draw(st.sampled_from(_MODES)) << 16
        return _with_entry(valid, info, draw(st.sampled_from([b"/etc/passwd", b"", b"../.."])))
    if kind == "folder":  # a folder entry with content
        return _with_entry(valid, zipfile.ZipInfo(top + "app/d/"), b"content")
    if kind == "flag":  # encrypted, or another general-purpose flag
        flag = draw(st.sampled_from([0x1, 0x8, 0x40, 0x800, 0xFFFF]))
        return _patch_central(valid, 8, "<H", flag, local=6)
    if kind == "method":
        method = draw(st.sampled_from([1, 6, 9, 12, 14, 19, 93, 95, 98, 99, 0xFFFF]))
        return _patch_central(valid, 10, "<H", method, local=8)
    if kind == "dup":
        names = zipfile.ZipFile(io.BytesIO(valid)).namelist()
        name = draw(st.sampled_from(names))
        twin = draw(st.sampled_from([name, name.upper(), name.swapcase(), name + "/"]))
        return _with_entry(valid, zipfile.ZipInfo(twin), b"twin")
    if kind == "nest":  # a file used as a folder
        names = [n for n in zipfile.ZipFile(io.BytesIO(valid)).namelist() if not n.endswith("/")]
        return _with_entry(valid, zipfile.ZipInfo(draw(st.sampled_from(names)) + "/x"), b"x")
    if kind == "size":  # declared uncompressed and/or compressed sizes that lie
        value = draw(st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF]))
        which = draw(st.sampled_from([(24, 22), (20, 18)]))  # uncompressed, compressed
        return _patch_central(valid, which[0], "<I", value, local=which[1])
    # the end record announces more entries than there are
    out = bytearray(valid)
    end = out.rfind(b"PK\x05\x06")
    count = draw(st.sampled_from([0, 1, 0xFFFE, 0xFFFF]))
    struct.pack_into("<HH", out, end + 8, count, count)
    return bytes(out)
