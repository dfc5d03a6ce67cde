"""A build folder's context: ``.dockerignore`` matched by Docker's rules, streamed as a tar.

The matcher cases are Docker's own: the examples of the ``.dockerignore`` documentation and
the tables of moby's ``patternmatcher`` and ``ignorefile`` tests.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kliko_async.cache.hashing import hash_tree
from kliko_async.engine.images import context_digest
from kliko_async.errors import ImageError
from kliko_async.runtime.buildcontext import context_members, open_context_archive
from kliko_async.runtime.dockerignore import (
    IgnorePatternError,
    IgnoreRules,
    MatchInfo,
    read_ignore_lines,
)

# (pattern, path, matches): moby patternmatcher's TestMatches, where "inexact" cases match
# through a parent folder; paths ending in '/' are as moby passes them.
MOBY_MATCHES = [
    ("**", "file", True),
    ("**", "file/", True),
    ("**/", "file", True),
    ("**/", "file/", True),
    ("**", "/", True),
    ("**/", "/", True),
    ("**", "dir/file", True),
    ("**/", "dir/file", True),
    ("**", "dir/file/", True),
    ("**/", "dir/file/", True),
    ("**/**", "dir/file", True),
    ("**/**", "dir/file/", True),
    ("dir/**", "dir/file", True),
    ("dir/**", "dir/file/", True),
    ("dir/**", "dir/dir2/file", True),
    ("dir/**", "dir/dir2/file/", True),
    ("**/dir", "dir", True),
    ("**/dir", "dir/file", True),
    ("**/dir2/*", "dir/dir2/file", True),
    ("**/dir2/*", "dir/dir2/file/", True),
    ("**/dir2/**", "dir/dir2/dir3/file", True),
    ("**/dir2/**", "dir/dir2/dir3/file/", True),
    ("**file", "file", True),
    ("**file", "dir/file", True),
    ("**/file", "dir/file", True),
    ("**file", "dir/dir/file", True),
    ("**/file", "dir/dir/file", True),
    ("**/file*", "dir/dir/file", True),
    ("**/file*", "dir/dir/file.txt", True),
    ("**/file*txt", "dir/dir/file.txt", True),
    ("**/file*.txt", "dir/dir/file.txt", True),
    ("**/file*.txt*", "dir/dir/file.txt", True),
    ("**/**/*.txt", "dir/dir/file.txt", True),
    ("**/**/*.txt2", "dir/dir/file.txt", False),
    ("**/*.txt", "file.txt", True),
    ("**/**/*.txt", "file.txt", True),
    ("a**/*.txt", "a/file.txt", True),
    ("a**/*.txt", "a/dir/file.txt", True),
    ("a**/*.txt", "a/dir/dir/file.txt", True),
    ("a/*.txt", "a/dir/file.txt", False),
    ("a/*.txt", "a/file.txt", True),
    ("a/*.txt**", "a/file.txt", True),
    ("a[b-d]e", "ae", False),
    ("a[b-d]e", "ace", True),
    ("a[b-d]e", "aae", False),
    ("a[^b-d]e", "aze", True),
    (".*", ".foo", True),
    (".*", "foo", False),
    ("abc.def", "abcdef", False),
    ("abc.def", "abc.def", True),
    ("abc.def", "abcZdef", False),
    ("abc?def", "abcZdef", True),
    ("abc?def", "abcdef", False),
    ("**/foo/bar", "foo/bar", True),
    ("**/foo/bar", "dir/foo/bar", True),
    ("**/foo/bar", "dir/dir2/foo/bar", True),
    ("abc/**", "abc", False),
    ("abc/**", "abc/def", True),
    ("abc/**", "abc/def/ghi", True),
    ("**/.foo", ".foo", True),
    ("**/.foo", "bar.foo", False),
    ("a(b)c/def", "a(b)c/def", True),
    ("a(b)c/def", "a(b)c/xyz", False),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    ("a\\\\", "a\\", True),
    ("a\\*b", "a*b", True),
]

MOBY_MULTI = [
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
    (["docs", "!docs/README.md"], "docs/README.md", False),
    (["docs/", "!docs/README.md"], "docs/README.md", False),
    (["docs/*", "!docs/README.md"], "docs/README.md", False),
    (["*.go", "!fileutils.go"], "fileutils.go", False),
    (["!fileutils.go", "*.go"], "fileutils.go", True),
]

# Go's filepath.Match table, as moby's TestMatch runs it.
GO_MATCH = [
    ("abc", "abc", True),
    ("*", "abc", True),
    ("*c", "abc", True),
    ("a*", "a", True),
    ("a*", "ab/c", True),
    ("a*/b", "abc/b", True),
    ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True),
    ("a*b?c*x", "abxbbxdbxebxczzy", False),
    ("ab[^c]", "abc", False),
    ("ab[^e-g]", "abc", True),
    ("a\\*b", "ab", False),
    ("a?b", "a☺b", True),
    ("a???b", "a☺b", False),
    ("[a-ζ]*", "α", True),
    ("*[a-ζ]", "A", False),
    ("a?b", "a/b", False),
    ("a*b", "a/b", False),
    ("[\\]a]", "]", True),
    ("[x\\-]", "-", True),
    ("[\\-x]", "a", False),
    ("*x", "xxx", True),
]
GO_BAD = ["[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "[", "[^", "[^bc", "a[", "!"]


def through_parents(rules: IgnoreRules, path: str) -> bool:
    """Whether ``path`` is excluded, its folders matched first (as a walk of the context)."""
    parts = path.split("/")
    info: MatchInfo | None = None
    for depth in range(1, len(parts)):
        _, info = rules.match("/".join(parts[:depth]), info)
    return rules.match(path, info)[0]


@pytest.mark.parametrize(("pattern", "path", "expected"), MOBY_MATCHES + GO_MATCH)
def test_one_pattern_matches_as_moby_does(pattern: str, path: str, expected: bool) -> None:
    rules = IgnoreRules([pattern])

    assert rules.match(path)[0] is expected
    assert through_parents(rules, path) is expected


@pytest.mark.parametrize(("patterns", "path", "expected"), MOBY_MULTI)
def test_the_last_matching_pattern_decides(patterns: list[str], path: str, expected: bool) -> None:
    rules = IgnoreRules(patterns)

    assert rules.match(path)[0] is expected
    assert through_parents(rules, path) is expected


@pytest.mark.parametrize("pattern", GO_BAD)
def test_patterns_docker_refuses_are_refused(pattern: str) -> None:
    with pytest.raises(IgnorePatternError, match="is not valid"):
        IgnoreRules([pattern])


def test_the_file_is_read_as_docker_reads_it() -> None:
    text = (
        "\ufefftest1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n"
        "! /inverted/abs/path\n!\n! \n  # not a comment: '#' is not first\n./x//y/\n"
    )

    assert read_ignore_lines(text) == [
        "test1",
        "test2",
        "a/file/here",
        "lastfile",
        "!inverted/abs/path",
        "!",
        "!",
        "# not a comment: '#' is not first",
        "x/y",
    ]


def make_folder(root: Path, files: list[str], ignore: str | None) -> Path:
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"content of {name}\n")
    (root / "Dockerfile").write_text("FROM scratch\n")
    if ignore is not None:
        (root / ".dockerignore").write_text(ignore)
    return root


def sent(root: Path) -> set[str]:
    return {m.path for m in context_members(root) if m.kind != "dir"}


def test_the_documented_example_excludes_temp_files_one_and_two_levels_down(
    tmp_path: Path,
) -> None:
    files = [
        "somedir/temporary.txt",
        "somedir/temp/inside.txt",
        "somedir/subdir/temporary.txt",
        "somedir/subdir/deeper/temporary.txt",
        "tempa",
        "tempb",
        "temp",
        "temporary.txt",
        "somedir/kept.txt",
    ]
    root = make_folder(tmp_path, files, "# comment\n*/temp*\n*/*/temp*\ntemp?\n")

    assert sent(root) == {
        ".dockerignore",
        "Dockerfile",
        "somedir/subdir/deeper/temporary.txt",  # three levels down: no pattern reaches it
        "temp",  # 'temp?' needs one more character
        "temporary.txt",
        "somedir/kept.txt",
    }


@pytest.mark.parametrize(
    ("ignore", "expected"),
    [
        ("**/*.go\n", {"README.md", "README-secret.md", "notes.md", "src/c.md"}),
        ("*.md\n!README.md\n", {"README.md", "a.go", "src/b.go", "src/c.md"}),
        ("*.md\n!README*.md\nREADME-secret.md\n", {"README.md", "a.go", "src/b.go", "src/c.md"}),
        (
            "*.md\nREADME-secret.md\n!README*.md\n",
            {"README.md", "README-secret.md", "a.go", "src/b.go", "src/c.md"},
        ),
        ("*\n!src\n", {"src/b.go", "src/c.md"}),
        ("/src/b.go\n", {"README.md", "README-secret.md", "notes.md", "a.go", "src/c.md"}),
    ],
)
def test_the_documented_exception_examples(tmp_path: Path, ignore: str, expected: set[str]) -> None:
    files = ["README.md", "README-secret.md", "notes.md", "a.go", "src/b.go", "src/c.md"]
    root = make_folder(tmp_path, files, ignore)

    assert sent(root) - {"Dockerfile", ".dockerignore"} == expected


def test_an_excepted_file_inside_an_excluded_folder_is_sent_without_the_rest(
    tmp_path: Path,
) -> None:
    root = make_folder(
        tmp_path, ["data/keep.txt", "data/drop.txt", "data/sub/x"], "data\n!data/keep.txt\n"
    )

    members = {m.path: m.kind for m in context_members(root)}

    assert "data/keep.txt" in members
    assert "data/drop.txt" not in members and "data/sub" not in members
    assert "data" not in members, "as docker build: the folder comes with what it holds"


def test_the_dockerfile_and_the_ignore_file_are_sent_even_when_listed(tmp_path: Path) -> None:
    root = make_folder(tmp_path, ["a.txt"], "Dockerfile\n.dockerignore\n*.txt\n")

    assert sent(root) == {"Dockerfile", ".dockerignore"}


def test_a_bad_ignore_file_is_one_clear_error(tmp_path: Path) -> None:
    root = make_folder(tmp_path, [], "ok\nbroken[\n")

    with pytest.raises(ImageError) as caught:
        context_members(root)

    assert str(tmp_path) in str(caught.value)
    assert ".dockerignore" in str(caught.value) and "'broken['" in str(caught.value)


opened: list[str] | None = None


def _record_opens(event: str, args: tuple[Any, ...]) -> None:
    if opened is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        opened.append(os.fsdecode(args[0]))


sys.addaudithook(_record_opens)


@pytest.fixture
def opened_files() -> Iterator[list[str]]:
    """Every path this process opens while the test runs (Python's audit events)."""
    global opened
    opened = []
    try:
        yield opened
    finally:
        opened = None


def test_an_ignored_file_is_never_opened_nor_sent(tmp_path: Path, opened_files: list[str]) -> None:
    root = make_folder(tmp_path, ["kept.txt", "ignored_dir/deep/file"], "big.bin\nignored_dir\n")
    with (root / "big.bin").open("wb") as handle:
        handle.truncate(300 << 20)  # sparse: costs no disk
    opened_files.clear()

    archive = open_context_archive(root)
    data = archive.read()
    digest = context_digest(root)

    assert not [p for p in opened_files if "big.bin" in p or "ignored_dir" in p]
    assert any(p.endswith("kept.txt") for p in opened_files), "the hook does see opens"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert sorted(tar.getnames()) == [".dockerignore", "Dockerfile", "kept.txt"]
    assert len(data) < 64 << 10 and digest


def test_the_tar_is_made_in_small_pieces_and_holds_the_files(tmp_path: Path) -> None:
    root = make_folder(tmp_path, ["a/b.txt"], None)
    (root / "big").write_bytes(os.urandom(3 << 20))
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "link").symlink_to("a/b.txt")

    archive = open_context_archive(root)
    pieces = iter(lambda: archive.read(8192), b"")
    sizes, data = [], bytearray()
    for piece in pieces:
        sizes.append(len(piece))
        data += piece

    assert max(sizes) <= 8192
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile("big").read() == (root / "big").read_bytes()  # type: ignore[union-attr]
    assert members["link"].issym() and members["link"].linkname == "a/b.txt"
    assert members["a"].isdir() and members["run.sh"].mode & 0o111
    assert {m.uid for m in members.values()} == {0}, "as docker build sends them"


def test_the_digest_ignores_what_is_not_sent(tmp_path: Path) -> None:
    root = make_folder(tmp_path, ["kept.txt", "notes/a.txt"], "secret.txt\nnotes\n")
    (root / "secret.txt").write_text("one\n")
    before = context_digest(root)

    (root / "secret.txt").write_text("two\n")
    (root / "notes" / "b.txt").write_text("new\n")
    unchanged = context_digest(root)
    (root / "kept.txt").write_text("changed\n")

    assert unchanged == before
    assert context_digest(root) != before


def test_without_an_ignore_file_the_digest_is_what_it_was(tmp_path: Path) -> None:
    """Images built before keep their labels, so their steps stay cached."""
    root = make_folder(tmp_path, ["a.txt", "sub/b.txt"], None)
    (root / "link").symlink_to("a.txt")
    former = hashlib.sha256()
    for rel, content in sorted(hash_tree(root).items()):
        executable = os.access(root / rel, os.X_OK) and not (root / rel).is_symlink()
        former.update(f"{os.fsencode(rel).hex()} {content} {int(executable)}\n".encode())

    assert context_digest(root) == former.hexdigest()
