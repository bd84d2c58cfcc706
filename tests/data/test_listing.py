"""find_images on a real temporary tree: every path once, symlinks followed once, loops and
broken links skipped with a reason, folders named like photos ignored, non-UTF-8 names kept."""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path

import pytest

from ifn.data.corpus import list_images
from ifn.data.listing import FoundPath, count_statuses, find_images, report_entries


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _by_name(found: list[FoundPath], root: Path) -> dict[str, FoundPath]:
    names = [f.path.relative_to(root).as_posix() for f in found]
    assert len(names) == len(set(names)), "a path is listed twice"
    return dict(zip(names, found, strict=True))


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """photos/ with nested folders, a symlinked outside folder, a loop, broken links, a
    directory named x.jpg, a non-UTF-8 name and a duplicate link to a file."""
    root = tmp_path / "photos"
    for name in ("a.jpg", "B.PNG", "nested/deeper/c.webp", "nested/notes.txt", "x.jpg/inside.png", "d.pts"):
        _touch(root / name)
    outside = tmp_path / "elsewhere"
    for k in range(3):
        _touch(outside / f"o{k}.jpg")
    os.symlink(outside, root / "linked")  # a symlinked folder outside the tree: followed
    os.symlink(root, root / "nested" / "up")  # a loop back to the root
    os.symlink(root / "nested", root / "again")  # a second path to a folder already listed
    os.symlink(tmp_path / "gone.jpg", root / "broken.jpg")  # a broken link
    os.symlink("self.jpg", root / "self.jpg")  # a link to itself
    os.symlink(root / "a.jpg", root / "z_same.jpg")  # a second path to a file already listed
    _touch(Path(os.fsdecode(os.fsencode(root) + b"/caf\xe9.jpg")))  # Latin-1, not UTF-8
    return root


def test_every_path_once_with_its_status(tree: Path) -> None:
    found = _by_name(find_images([tree]), tree)
    images = {name for name, f in found.items() if f.status == "image"}
    assert images == {
        "a.jpg", "B.PNG", "nested/deeper/c.webp", "x.jpg/inside.png", "linked/o0.jpg", "linked/o1.jpg",
        "linked/o2.jpg", os.fsdecode(b"caf\xe9.jpg"),
    }  # fmt: skip
    assert all(found[name].reason is None for name in images)
    assert found["nested/notes.txt"].status == "ignored" and ".txt" in found["nested/notes.txt"].reason
    assert found["d.pts"].status == "ignored"
    assert found["x.jpg"].status == "ignored" and "directory" in found["x.jpg"].reason
    assert found["nested/up"].status == "skipped" and "loop" in found["nested/up"].reason
    assert found["self.jpg"].status == "skipped" and "loop" in found["self.jpg"].reason
    assert found["broken.jpg"].status == "skipped" and "broken symbolic link" in found["broken.jpg"].reason
    assert "gone.jpg" in found["broken.jpg"].reason
    assert found["again"].status == "ignored" and "same folder as" in found["again"].reason
    assert found["z_same.jpg"].status == "ignored" and "same file as" in found["z_same.jpg"].reason
    # Nothing else: the folders themselves are containers, not entries (except x.jpg/).
    assert len(found) == len(images) + 8
    assert count_statuses(found.values()) == {"image": 8, "ignored": 5, "skipped": 3}


def test_sorted_stable_and_duplicates_listed_once(tree: Path) -> None:
    once = find_images([tree])
    assert [f.path.as_posix() for f in once] == sorted(f.path.as_posix() for f in once)
    assert find_images([tree]) == once  # stable
    twice = find_images([tree, tree, tree / "a.jpg", str(tree) + "/./a.jpg"])
    assert twice == once


def test_files_and_globs_as_inputs(tree: Path, tmp_path: Path) -> None:
    found = find_images([tree / "a.jpg", str(tree / "nested" / "**" / "*.webp"), str(tree / "*.PNG")])
    assert [(f.path, f.status) for f in found] == [
        (tree / "B.PNG", "image"), (tree / "a.jpg", "image"), (tree / "nested" / "deeper" / "c.webp", "image"),
    ]  # fmt: skip
    # A glob that matches a folder walks it; one that matches nothing and a missing path are entries.
    found = find_images([str(tree / "nest*"), str(tmp_path / "none*.jpg"), tmp_path / "missing"])
    statuses = {f.path.name: (f.status, f.reason) for f in found}
    assert statuses["c.webp"] == ("image", None)
    assert statuses["none*.jpg"] == ("skipped", "no file matches this pattern")
    assert statuses["missing"] == ("skipped", "no such file or folder")
    # A file whose name looks like a pattern is that file, not a pattern.
    literal = _touch(tmp_path / "lit" / "a[1].jpg")
    assert [f.path for f in find_images([literal])] == [literal]


def test_symlinked_folder_inside_the_tree_is_listed_under_its_real_path(tmp_path: Path) -> None:
    root = tmp_path / "p"
    for k in range(7):
        _touch(root / "real" / f"{k}.jpg")
    os.symlink(root / "real", root / "a_link")  # sorts first, but the real folder wins
    found = _by_name(find_images([root]), root)
    assert {n for n, f in found.items() if f.status == "image"} == {f"real/{k}.jpg" for k in range(7)}
    assert found["a_link"].status == "ignored" and "real" in found["a_link"].reason


def test_a_symlinked_folder_given_as_input_and_links_into_it(tmp_path: Path) -> None:
    target = tmp_path / "target"
    _touch(target / "a.jpg")
    os.symlink(target, tmp_path / "given")
    found = find_images([tmp_path / "given"])
    assert [(f.path, f.status) for f in found] == [(tmp_path / "given" / "a.jpg", "image")]


def test_mutual_symlink_loop_between_two_folders(tmp_path: Path) -> None:
    root = tmp_path / "r"
    _touch(root / "one" / "a.jpg")
    _touch(root / "two" / "b.jpg")
    os.symlink(root / "two", root / "one" / "to_two")
    os.symlink(root / "one", root / "two" / "to_one")
    found = _by_name(find_images([root]), root)
    assert {n for n, f in found.items() if f.status == "image"} == {"one/a.jpg", "two/b.jpg"}
    assert found["one/to_two"].status == "ignored" and found["two/to_one"].status == "ignored"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_permission_denied_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "r"
    locked = _touch(root / "locked.jpg")
    _touch(root / "closed" / "a.jpg")
    locked.chmod(0)
    (root / "closed").chmod(0)
    try:
        found = _by_name(find_images([root]), root)
    finally:
        (root / "closed").chmod(0o755)
    assert found["locked.jpg"].status == "skipped" and "permission denied" in found["locked.jpg"].reason
    assert found["closed"].status == "skipped" and "permission denied" in found["closed"].reason


def test_special_files_are_ignored(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jpg")  # reading it would block forever
    (found,) = find_images([tmp_path])
    assert found.status == "ignored" and found.reason == "not a regular file (named pipe)"


def test_report_entries_are_valid_utf8_and_recoverable(tree: Path) -> None:
    entries = report_entries(find_images([tree]), root=tree)
    text = json.dumps(entries, ensure_ascii=False).encode("utf-8").decode("utf-8")
    assert "\\ud" not in text.lower()
    paths = {urllib.parse.unquote_to_bytes(e["path"]) for e in entries}
    assert b"caf\xe9.jpg" in paths and b"x.jpg" in paths and b"nested/up" in paths
    assert {e["status"] for e in entries} == {"image", "ignored", "skipped"}


def test_list_images_uses_the_listing(tree: Path) -> None:
    names = [p.relative_to(tree).as_posix() for p in list_images(tree)]
    assert names == [f.path.relative_to(tree).as_posix() for f in find_images([tree]) if f.status == "image"]
    assert "linked/o0.jpg" in names and "x.jpg" not in names
    with pytest.raises(NotADirectoryError):
        list_images(tree / "a.jpg")
