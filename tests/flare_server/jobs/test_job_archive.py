"""Uploaded job archives: every attack is refused before anything is kept, naming the entry."""

from __future__ import annotations

import stat
import struct
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from jobzip_helpers import patch_declared_size, set_encrypted_flag, valid_job_files, write_zip

from flare_protocol.errors import InvalidArgumentError, InvalidJobDefinition
from flare_server.jobs.archive import ArchiveLimits, safe_extract, validate_job_archive

TOP = "hello-numpy"


def zip_with(path: Path, *extra: tuple[zipfile.ZipInfo | str, bytes]) -> Path:
    """A valid job zip plus ``extra`` entries (names are used verbatim)."""
    write_zip(path, valid_job_files(), top=TOP)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicates we add on purpose
        with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as zf:
            for info, data in extra:
                zf.writestr(info, data)
    return path


DEFAULT_LIMITS = ArchiveLimits()


def rejected(path: Path, limits: ArchiveLimits = DEFAULT_LIMITS) -> InvalidJobDefinition:
    with pytest.raises(InvalidJobDefinition) as info:
        validate_job_archive(path, limits)
    return info.value


def with_mode(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = mode << 16
    return info


def test_valid_archive_with_one_top_folder_passes(make_zip: Callable[..., Path]) -> None:
    definition = validate_job_archive(make_zip())
    assert definition.meta["name"] == "hello-numpy"
    assert definition.apps == ("app",)
    assert definition.entries == 4
    assert definition.uncompressed_bytes == sum(len(v) for v in valid_job_files().values())


def test_valid_archive_with_meta_at_root_passes(make_zip: Callable[..., Path]) -> None:
    assert validate_job_archive(make_zip(top=None)).apps == ("app",)


def test_folder_entries_are_accepted(tmp_path: Path) -> None:
    path = zip_with(tmp_path / "j.zip", (f"{TOP}/app/", b""), (f"{TOP}/app/custom/", b""))
    assert validate_job_archive(path).entries == 4


def test_parent_component_is_refused_naming_the_entry(tmp_path: Path) -> None:
    error = rejected(zip_with(tmp_path / "j.zip", (f"{TOP}/../evil.py", b"x")))
    assert str(error) == f"archive entry '{TOP}/../evil.py' has a '..' component"
    assert error.path == f"{TOP}/../evil.py"


def test_absolute_path_is_refused(tmp_path: Path) -> None:
    error = rejected(zip_with(tmp_path / "j.zip", ("/etc/cron.d/evil", b"x")))
    assert "'/etc/cron.d/evil' has an absolute path" in str(error)


def test_drive_letter_is_refused(tmp_path: Path) -> None:
    error = rejected(zip_with(tmp_path / "j.zip", ("C:/evil", b"x")))
    assert "'C:/evil' has a drive letter" in str(error)


def test_backslash_is_refused(tmp_path: Path) -> None:
    error = rejected(zip_with(tmp_path / "j.zip", (f"{TOP}\\..\\evil", b"x")))
    assert "has a backslash" in str(error)


def test_control_character_is_refused(tmp_path: Path) -> None:
    error = rejected(zip_with(tmp_path / "j.zip", (f"{TOP}/a\x1bb", b"x")))
    assert "control character" in str(error)


def test_nul_in_a_name_is_refused(tmp_path: Path) -> None:
    # zipfile truncates names at NUL when reading; the check must see the original bytes.
    path = zip_with(tmp_path / "j.zip", (f"{TOP}/aXb.py", b"x"))
    path.write_bytes(path.read_bytes().replace(b"aXb.py", b"a\x00b.py"))
    assert "control character" in str(rejected(path))


def test_symlink_entry_is_refused(tmp_path: Path) -> None:
    link = with_mode(f"{TOP}/app/custom/link", stat.S_IFLNK | 0o777)
    error = rejected(zip_with(tmp_path / "j.zip", (link, b"/etc/passwd")))
    assert str(error) == f"archive entry '{TOP}/app/custom/link' is a symlink"


@pytest.mark.parametrize("kind", [stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK])
def test_device_fifo_and_socket_entries_are_refused(tmp_path: Path, kind: int) -> None:
    error = rejected(zip_with(tmp_path / "j.zip", (with_mode(f"{TOP}/dev", kind | 0o644), b"")))
    assert "is a device, FIFO or socket" in str(error)


def test_duplicate_entry_is_refused(tmp_path: Path) -> None:
    error = rejected(zip_with(tmp_path / "j.zip", (f"{TOP}/meta.json", b"{}")))
    assert str(error) == f"archive entry '{TOP}/meta.json' is a duplicate"


def test_names_differing_only_by_case_are_refused(tmp_path: Path) -> None:
    error = rejected(zip_with(tmp_path / "j.zip", (f"{TOP}/META.json", b"{}")))
    assert "differs from entry" in str(error) and "only by case" in str(error)


def test_file_used_as_a_folder_is_refused(tmp_path: Path) -> None:
    error = rejected(zip_with(tmp_path / "j.zip", (f"{TOP}/meta.json/x", b"{}")))
    assert "lies inside a file" in str(error)


def test_encrypted_entry_is_refused(tmp_path: Path) -> None:
    path = zip_with(tmp_path / "j.zip", (f"{TOP}/secret", b"x"))
    set_encrypted_flag(path, f"{TOP}/secret")
    assert str(rejected(path)) == f"archive entry '{TOP}/secret' is encrypted"


def test_too_many_entries_are_refused(make_zip: Callable[..., Path]) -> None:
    error = rejected(make_zip(), ArchiveLimits(max_entries=3))
    assert str(error) == "archive has 4 entries; at most 3 are allowed"


def test_declared_uncompressed_total_over_cap_is_refused(make_zip: Callable[..., Path]) -> None:
    error = rejected(make_zip(), ArchiveLimits(max_uncompressed_bytes=100))
    assert "declares more than 100 uncompressed bytes" in str(error)


def test_oversized_upload_is_refused(make_zip: Callable[..., Path]) -> None:
    error = rejected(make_zip(), ArchiveLimits(max_upload_bytes=100))
    assert "at most 100 are allowed" in str(error)


def test_an_entry_over_the_compression_ratio_cap_is_refused_naming_it_and_the_setting(
    tmp_path: Path,
) -> None:
    path = zip_with(tmp_path / "j.zip", (f"{TOP}/app/zeros.bin", bytes(2 * 1024 * 1024)))
    error = rejected(path)
    assert str(error).startswith(f"archive entry '{TOP}/app/zeros.bin' has a compression ratio")
    assert "at most 200:1 is allowed (server setting max_compression_ratio)" in str(error)
    assert error.path == f"{TOP}/app/zeros.bin"


def test_the_ratio_is_read_from_the_directory_before_anything_is_inflated(tmp_path: Path) -> None:
    path = zip_with(tmp_path / "j.zip", (f"{TOP}/app/zeros.bin", bytes(2 * 1024 * 1024)))
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{TOP}/app/zeros.bin")
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode())
    data[start : start + info.compress_size] = b"\xff" * info.compress_size  # not deflate
    path.write_bytes(bytes(data))
    assert "compression ratio" in str(rejected(path))  # not "corrupt": never inflated


def test_entries_under_64_kib_are_exempt_from_the_entry_ratio(tmp_path: Path) -> None:
    path = zip_with(tmp_path / "j.zip", (f"{TOP}/app/zeros.bin", bytes(60 * 1024)))
    assert validate_job_archive(path).entries == 5


def test_many_small_entries_count_towards_the_overall_ratio(tmp_path: Path) -> None:
    small = [(f"{TOP}/app/z{i}.bin", bytes(60 * 1024)) for i in range(40)]
    error = rejected(zip_with(tmp_path / "j.zip", *small))
    assert str(error).startswith("archive has a compression ratio of")
    assert "overall" in str(error) and "max_compression_ratio" in str(error)


def test_the_ratio_cap_can_be_raised_or_switched_off(tmp_path: Path) -> None:
    path = zip_with(tmp_path / "j.zip", (f"{TOP}/app/zeros.bin", bytes(2 * 1024 * 1024)))
    assert validate_job_archive(path, ArchiveLimits(max_ratio=2000)).entries == 5
    assert validate_job_archive(path, ArchiveLimits(max_ratio=None)).entries == 5
    assert "at most 10:1" in str(rejected(path, ArchiveLimits(max_ratio=10)))


@pytest.fixture(scope="module")
def lying_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 MB of zeros (about 200 kB deflated) whose headers declare 1,000 bytes."""
    path = zip_with(tmp_path_factory.mktemp("bomb") / "bomb.zip")
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as zf:
        with zf.open(f"{TOP}/app/custom/bomb.bin", "w") as out:
            block = bytes(1024 * 1024)
            for _ in range(200):
                out.write(block)
    patch_declared_size(path, f"{TOP}/app/custom/bomb.bin", 1000)
    return path


def test_bomb_lying_about_its_size_is_stopped_by_the_counting_reader(lying_bomb: Path) -> None:
    assert lying_bomb.stat().st_size < 2 * 1024 * 1024
    error = rejected(lying_bomb)
    assert f"archive entry '{TOP}/app/custom/bomb.bin' is corrupt or inflates beyond" in str(error)


def test_bomb_lying_about_its_size_is_not_extracted(lying_bomb: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    with pytest.raises(InvalidJobDefinition, match="bomb.bin"):
        safe_extract(lying_bomb, dest)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_honest_bomb_is_stopped_by_the_declared_cap(tmp_path: Path) -> None:
    path = zip_with(tmp_path / "j.zip", (f"{TOP}/app/zeros.bin", bytes(20 * 1024 * 1024)))
    error = rejected(path, ArchiveLimits(max_uncompressed_bytes=10 * 1024 * 1024))
    assert "declares more than 10485760 uncompressed bytes" in str(error)


def test_not_a_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.zip"
    path.write_bytes(b"this is not a zip" * 10)
    assert "not a readable zip archive" in str(rejected(path))


def test_truncated_zip_is_refused(make_zip: Callable[..., Path]) -> None:
    path = make_zip()
    path.write_bytes(path.read_bytes()[:-30])
    assert "not a readable zip archive" in str(rejected(path))


def test_two_top_level_folders_are_refused(tmp_path: Path) -> None:
    error = rejected(zip_with(tmp_path / "j.zip", ("other/readme.txt", b"x")))
    assert "not one job folder" in str(error) and "other" in str(error)


def test_archive_without_meta_is_refused(tmp_path: Path) -> None:
    files = valid_job_files()
    del files["meta.json"]
    error = rejected(write_zip(tmp_path / "j.zip", files))
    assert "no meta.json at its root" in str(error)


def test_malformed_meta_in_archive_names_file_and_field(make_zip: Callable[..., Path]) -> None:
    error = rejected(make_zip(meta={"min_clients": "two"}))
    assert str(error) == "meta.json: field 'min_clients' must be an integer >= 1, got \"two\""


def test_safe_extract_writes_the_job_root(make_zip: Callable[..., Path], tmp_path: Path) -> None:
    dest = tmp_path / "extracted"
    definition = safe_extract(make_zip(), dest)
    written = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert written == sorted(valid_job_files())
    assert (dest / "meta.json").read_bytes() == valid_job_files()["meta.json"]
    assert definition.entries == 4


def test_safe_extract_refuses_an_existing_destination(
    make_zip: Callable[..., Path], tmp_path: Path
) -> None:
    (tmp_path / "dest").mkdir()
    with pytest.raises(InvalidArgumentError, match="already exists"):
        safe_extract(make_zip(), tmp_path / "dest")


def test_safe_extract_of_a_symlink_archive_writes_nothing(tmp_path: Path) -> None:
    link = with_mode(f"{TOP}/app/link", stat.S_IFLNK | 0o777)
    path = zip_with(tmp_path / "j.zip", (link, b"/etc/passwd"))
    with pytest.raises(InvalidJobDefinition, match="is a symlink"):
        safe_extract(path, tmp_path / "dest")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.zip"]


# -- stored entries: checked by placement at upload, by CRC at extraction ------------------


def _stored(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_STORED
    return info


def _central_entry(data: bytes, name: str) -> int:
    """Offset of ``name``'s central-directory record."""
    eocd = data.rfind(b"PK\x05\x06")
    count, _, pos = struct.unpack_from("<HII", data, eocd + 10)
    for _ in range(count):
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, pos + 28)
        if data[pos + 46 : pos + 46 + name_len].decode() == name:
            return pos
        pos += 46 + name_len + extra_len + comment_len
    raise AssertionError(name)


def test_stored_entry_with_damaged_data_is_refused_when_extracted(tmp_path: Path) -> None:
    weights = b"W" * 100_000
    path = zip_with(tmp_path / "j.zip", (_stored(f"{TOP}/app/custom/w.bin"), weights))
    data = bytearray(path.read_bytes())
    data[data.find(weights) + 50_000] ^= 0xFF
    path.write_bytes(bytes(data))
    assert validate_job_archive(path).entries == 5  # not read back at upload
    with pytest.raises(InvalidJobDefinition, match="w.bin"):
        safe_extract(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_stored_entries_sharing_their_data_are_refused(tmp_path: Path) -> None:
    """Two directory records pointing at one stored entry: a size bomb without deflate."""
    path = zip_with(
        tmp_path / "j.zip",
        (_stored(f"{TOP}/app/custom/a.bin"), b"A" * 4096),
        (_stored(f"{TOP}/app/custom/b.bin"), b"B" * 4096),
    )
    data = bytearray(path.read_bytes())
    a = _central_entry(bytes(data), f"{TOP}/app/custom/a.bin")
    b = _central_entry(bytes(data), f"{TOP}/app/custom/b.bin")
    data[b + 42 : b + 46] = data[a + 42 : a + 46]  # b's record points at a's local header
    path.write_bytes(bytes(data))
    error = rejected(path)
    assert "a.bin" in str(error) or "b.bin" in str(error)


def test_stored_entry_whose_sizes_differ_is_refused(tmp_path: Path) -> None:
    path = zip_with(tmp_path / "j.zip", (_stored(f"{TOP}/app/custom/w.bin"), b"W" * 5000))
    patch_declared_size(path, f"{TOP}/app/custom/w.bin", 4000)
    assert "w.bin" in str(rejected(path))


def test_stored_entry_running_into_the_directory_is_refused(tmp_path: Path) -> None:
    path = zip_with(tmp_path / "j.zip", (_stored(f"{TOP}/app/custom/w.bin"), b"W" * 5000))
    data = bytearray(path.read_bytes())
    entry = _central_entry(bytes(data), f"{TOP}/app/custom/w.bin")
    for field in (20, 24):  # compressed and uncompressed size, equal and too big
        struct.pack_into("<I", data, entry + field, 50_000)
    path.write_bytes(bytes(data))
    assert "overlaps" in str(rejected(path))
