"""`fedbus run --out`'s write probe (fedbus/cli.py _folder_problem): it tries, and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

from fedbus.cli import _folder_problem


def test_a_writable_folder_passes_and_keeps_nothing_of_the_try(tmp_path: Path) -> None:
    (tmp_path / ".fedbus-write-test-1").write_text("left by a run killed mid-probe", encoding="utf-8")
    assert _folder_problem(tmp_path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fedbus-write-test-1"]
    assert _folder_problem(tmp_path / "a" / "b") is None
    assert not (tmp_path / "a").exists()  # folders made to try are removed again


def test_a_file_in_the_way_is_named(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("", encoding="utf-8")
    assert _folder_problem(tmp_path / "notes.txt") == "exists and is not a folder"
    assert _folder_problem(tmp_path / "notes.txt" / "run") == "cannot write there: Not a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
