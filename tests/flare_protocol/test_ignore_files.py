"""Ignore files: which files of a folder are part of the job."""

from __future__ import annotations

from pathlib import Path

import pytest

from flare_protocol.errors import InvalidJobDefinition
from flare_protocol.ignore_files import IgnoreRules, job_files, parse_ignore_file


def _tree(root: Path, *names: str) -> Path:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    return root


def test_without_an_ignore_file_every_file_is_part_of_the_job(tmp_path: Path) -> None:
    _tree(tmp_path, "meta.json", "app/train.py", "app/data/x.npz")
    assert job_files(tmp_path) == ["app/data/x.npz", "app/train.py", "meta.json"]


def test_a_name_pattern_matches_at_any_depth_and_a_folder_takes_its_contents(
    tmp_path: Path,
) -> None:
    _tree(tmp_path, "app/train.py", "app/data/x.npz", "app/sub/data/y.csv", "app/a.tgz", "b.tgz")
    (tmp_path / "app" / ".ignore").write_text("# Scaleout's .ignore\ndata\n*.tgz\n\n")
    assert job_files(tmp_path) == ["app/.ignore", "app/train.py", "b.tgz"]


def test_a_pattern_with_a_slash_is_relative_to_the_ignore_files_folder(tmp_path: Path) -> None:
    _tree(tmp_path, "seed.npz", "app/seed.npz", "app/models/raw/big.bin", "raw/keep.txt")
    (tmp_path / ".flareignore").write_text("/seed.npz\napp/models/raw/\n")
    assert job_files(tmp_path) == [".flareignore", "app/seed.npz", "raw/keep.txt"]


def test_stars_stay_within_a_name_and_double_stars_do_not(tmp_path: Path) -> None:
    _tree(tmp_path, "logs/a.log", "logs/old/b.log", "x/logs/c.log")
    (tmp_path / ".ignore").write_text("logs/*.log\n")
    assert job_files(tmp_path) == [".ignore", "logs/old/b.log", "x/logs/c.log"]
    (tmp_path / ".ignore").write_text("**/logs/**/*.log\n")
    assert job_files(tmp_path) == [".ignore"]


def test_a_trailing_slash_matches_folders_only_and_a_bang_re_includes(tmp_path: Path) -> None:
    _tree(tmp_path, "build/out.txt", "notes/build", "a.csv", "keep.csv")
    (tmp_path / ".fednignore").write_text("build/\n*.csv\n!keep.csv\n")
    assert job_files(tmp_path) == [".fednignore", "keep.csv", "notes/build"]


def test_a_deeper_ignore_file_adds_to_its_parents(tmp_path: Path) -> None:
    _tree(tmp_path, "app/x.txt", "app/y.txt", "other/x.txt")
    (tmp_path / ".flareignore").write_text("y.txt\n")
    (tmp_path / "app" / ".ignore").write_text("x.txt\n")
    assert job_files(tmp_path) == [".flareignore", "app/.ignore", "other/x.txt"]


def test_prune_works_inside_an_os_walk(tmp_path: Path) -> None:
    import os

    _tree(tmp_path, "a/skip/deep.txt", "a/keep.txt")
    (tmp_path / ".ignore").write_text("skip\n")
    rules = IgnoreRules(tmp_path)
    seen = []
    for dirpath, dirnames, filenames in os.walk(tmp_path):
        rules.prune(dirpath, dirnames, filenames)
        seen += [Path(dirpath, f).relative_to(tmp_path).as_posix() for f in filenames]
    assert sorted(seen) == [".ignore", "a/keep.txt"]


def test_comments_blank_lines_and_escapes(tmp_path: Path) -> None:
    rules = parse_ignore_file("# a comment\n\n  \\#literal  \n[ab].txt\n")
    assert [r.text for r in rules] == ["\\#literal", "[ab].txt"]
    _tree(tmp_path, "#literal", "a.txt", "c.txt")
    (tmp_path / ".ignore").write_text("\\#literal\n[ab].txt\n")
    assert job_files(tmp_path) == [".ignore", "c.txt"]


def test_a_huge_ignore_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".ignore").write_text("x\n" * 600_000)
    with pytest.raises(InvalidJobDefinition, match="larger than"):
        job_files(tmp_path)
