"""What resgen writes, and what it never touches (resgen/output.py; issue 12, items 1, 2, 10, 17).

- An existing file that resgen cannot prove it generated, of the kind it is about to write, is
  refused with exit 2 unless --force: by every command that writes, in every format.
- A target that is not a regular file (a FIFO, a device, a directory, a socket, a dangling link)
  is refused with or without --force, and never opened in a way that blocks.
- A failure half-way (a full disk, a read-only folder, a file that cannot be renamed) is one line
  and exit 2, and leaves every file as it was before the command.
- Two specs that would write the same files are refused before anything is written.
CI runs as root, which ignores folder modes: failures are simulated with patched `os` calls,
/dev/full and RLIMIT_FSIZE.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from resgen import output
from resgen.cli import main

ROOT = Path(__file__).resolve().parent.parent
NET = "network net { input 3x8x8 stem { c = conv(4, 3, padding=1) } }\n"
NEEDS_DOT = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is missing")


def _run(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.out + captured.err


def _spec(tmp_path: Path, name: str = "net.arch", text: str = NET) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _tree(folder: Path) -> dict[str, bytes | str]:
    """Every entry under `folder`: file contents, or the kind of anything else."""
    found: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[key] = path.read_bytes()
        else:
            found[key] = stat.filemode(path.lstat().st_mode)
    return found


# ---------------------------------------------------------------------------------------------
# Item 1: no file of the user's is replaced without --force, whatever the format

USER_FILES = {
    "python": ("mycode.py", b"print('my own code')\n"),
    "text": ("notes.txt", b"my notes\n"),
    # Real images of the user's: the format resgen writes, but not made by resgen.
    "png": ("photo.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(17) + b"user"),
    "pdf": ("paper.pdf", b"%PDF-1.5\n%user's paper\ntrailer\n<< /Size 1 >>\n%%EOF\n"),
    "svg": ("logo.svg", b"<?xml version='1.0'?>\n<svg>mine</svg>\n"),
    "dot": ("graph.dot", b"digraph mine {\n\ta -> b\n}\n"),
}
FORMAT_SUFFIX = {"svg": ".svg", "png": ".png", "pdf": ".pdf", "dot": ".dot"}


# Each user file with each format; a file whose suffix belongs to another format is refused as a
# mismatch before this rule applies (test_diagram), so those pairs are not drawn.
USER_CASES = [
    (case, fmt)
    for case, (name, _) in sorted(USER_FILES.items())
    for fmt in FORMAT_SUFFIX
    if Path(name).suffix not in FORMAT_SUFFIX.values() or Path(name).suffix == FORMAT_SUFFIX[fmt]
]


@NEEDS_DOT
@pytest.mark.parametrize(("case", "fmt"), USER_CASES)
def test_diagram_never_replaces_a_users_file(case, fmt, tmp_path, capsys):
    name, data = USER_FILES[case]
    target = tmp_path / name
    target.write_bytes(data)
    spec = _spec(tmp_path)
    diagram_name = Path(name).suffix in FORMAT_SUFFIX.values()
    status, text = _run(capsys, "diagram", str(spec), "--format", fmt, "-o", str(target))
    # A diagram's own suffix: refused unless --force. Another (mycode.py): never a diagram.
    expected = "--force" if diagram_name else "is not a diagram file resgen writes"
    assert status == 2 and expected in text, text
    assert target.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "net.arch"])
    status, text = _run(capsys, "diagram", str(spec), "--format", fmt, "-o", str(target), "--force")
    if diagram_name:
        assert status == 0, text
        assert target.read_bytes() != data
    else:
        assert status == 2 and target.read_bytes() == data, text


@NEEDS_DOT
@pytest.mark.parametrize("fmt", ["svg", "png", "pdf", "dot"])
def test_diagram_replaces_its_own_file_of_each_format(fmt, tmp_path, capsys):
    spec = _spec(tmp_path)
    target = tmp_path / f"net{FORMAT_SUFFIX[fmt]}"
    for _ in range(2):  # the second run finds resgen's mark and replaces the file freely
        status, text = _run(capsys, "diagram", str(spec), "--format", fmt, "-o", str(target))
        assert status == 0, text
    assert output.KINDS[fmt].recognise(target.read_bytes()[:1024], target.read_bytes()[-1024:])


@NEEDS_DOT
def test_png_mark_is_a_valid_text_chunk(tmp_path, capsys):
    """Read back by Pillow: every chunk's CRC checks, and the text chunk says who made it."""
    image = pytest.importorskip("PIL.Image")
    target = tmp_path / "net.png"
    assert (
        _run(capsys, "diagram", str(_spec(tmp_path)), "--format", "png", "-o", str(target))[0] == 0
    )
    with image.open(target) as picture:
        picture.verify()  # CRCs of every chunk
    with image.open(target) as picture:
        assert picture.text == {"Comment": output.MARK}
        picture.load()


@NEEDS_DOT
def test_pdf_mark_is_a_valid_incremental_update(tmp_path, capsys):
    """Read back by pypdf in strict mode: the last trailer's Info says who made it, and the
    drawing (the first revision's page) is intact."""
    pypdf = pytest.importorskip("pypdf")
    target = tmp_path / "net.pdf"
    assert (
        _run(capsys, "diagram", str(_spec(tmp_path)), "--format", "pdf", "-o", str(target))[0] == 0
    )
    reader = pypdf.PdfReader(str(target), strict=True)
    assert reader.metadata["/Creator"] == output.MARK
    assert len(reader.pages) == 1 and "conv" in reader.pages[0].extract_text()


@NEEDS_DOT
def test_resgens_file_of_another_kind_is_not_replaced(tmp_path, capsys):
    """A module `build` wrote is resgen's, but it is not a PNG: the picture does not replace it."""
    spec = _spec(tmp_path)
    assert _run(capsys, "build", "--no-diagram", "-o", str(tmp_path), str(spec))[0] == 0
    module = (tmp_path / "net.py").read_bytes()
    status, text = _run(
        capsys, "diagram", str(spec), "--format", "png", "-o", str(tmp_path / "net.py")
    )
    assert status == 2 and "is not a diagram file resgen writes" in text  # refused by suffix
    assert (tmp_path / "net.py").read_bytes() == module
    # and below the command line, by kind: a resgen .py is not a resgen PNG
    assert output.target_problem(tmp_path / "net.py", output.KINDS["png"]) is not None


@pytest.mark.parametrize("name", ["net.py", "net.dot", "net.svg"])
def test_build_never_replaces_a_users_file(name, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text("mine\n")
    status, text = _run(capsys, "build", "-o", str(out), str(_spec(tmp_path)))
    assert status == 2 and "--force" in text
    assert (out / name).read_text() == "mine\n"


# ---------------------------------------------------------------------------------------------
# Item 2: only regular files are written, with or without --force


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _device(path: Path) -> Path:
    """A character device like /dev/null, made in the test's own folder (root only)."""
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return path


def _socket(path: Path) -> Path:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    return path


def _directory(path: Path) -> Path:
    path.mkdir()
    return path


def _dangling(path: Path) -> Path:
    path.symlink_to(path.parent / "nowhere")
    return path


def _link_to_directory(path: Path) -> Path:
    (path.parent / "real_dir").mkdir()
    path.symlink_to(path.parent / "real_dir")
    return path


def _link_to_fifo(path: Path) -> Path:
    os.mkfifo(path.parent / "real_fifo")
    path.symlink_to(path.parent / "real_fifo")
    return path


NOT_REGULAR = {
    "fifo": _fifo,
    "device": _device,
    "socket": _socket,
    "directory": _directory,
    "dangling-link": _dangling,
    "link-to-directory": _link_to_directory,
    "link-to-fifo": _link_to_fifo,
}


def _resgen(*argv: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """A separate process with a timeout: a FIFO opened for reading would block forever."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "resgen", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`resgen {' '.join(argv)}` hangs")


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
@pytest.mark.parametrize("what", sorted(NOT_REGULAR))
@pytest.mark.parametrize("name", ["net.py", "net.dot"])
def test_build_refuses_what_is_not_a_regular_file(name, what, force, tmp_path):
    spec = _spec(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    NOT_REGULAR[what](out / name)
    before = _tree(out)
    result = _resgen("build", "-o", "out", spec.name, *(["--force"] if force else []), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{out / name}".endswith(result.stderr.split(" is ")[0].split("error: ")[-1]), (
        result.stderr
    )
    assert "regular file" in result.stderr or "symbolic link to nothing" in result.stderr
    after = _tree(out)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing replaced


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
@pytest.mark.parametrize("what", sorted(NOT_REGULAR))
def test_diagram_refuses_what_is_not_a_regular_file(what, force, tmp_path):
    spec = _spec(tmp_path)
    target = NOT_REGULAR[what](tmp_path / "net.dot")
    before = _tree(tmp_path)
    argv = ["diagram", spec.name, "--format", "dot", "-o", target.name]
    result = _resgen(*argv, *(["--force"] if force else []), cwd=tmp_path)
    if what in ("directory", "link-to-directory"):  # -o DIR means the default name inside it
        assert result.returncode == 0, result.stderr
        assert (
            (tmp_path / "real_dir" if "link" in what else target)
            .joinpath("net.stages.dot")
            .is_file()
        )
        return
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert _tree(tmp_path) == before


def test_a_link_to_a_regular_file_is_written_through(tmp_path, capsys):
    """The link stays a link; the file it points to gets the new content (as editors do)."""
    spec = _spec(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "real.py").write_text("# mine\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "net.py").symlink_to(elsewhere / "real.py")
    assert _run(capsys, "build", "--no-diagram", "-o", str(out), str(spec))[0] == 2  # not resgen's
    assert (elsewhere / "real.py").read_text() == "# mine\n"
    assert _run(capsys, "build", "--no-diagram", "--force", "-o", str(out), str(spec))[0] == 0
    assert (out / "net.py").is_symlink()
    assert output.is_generated((elsewhere / "real.py").read_bytes(), "py")
    assert sorted(p.name for p in elsewhere.iterdir()) == ["real.py"]  # no temporary files


def test_unchanged_build_reads_no_more_than_it_needs(tmp_path, capsys, monkeypatch):
    """Deciding whether a file is resgen's reads its first KiB, not the whole file."""
    out = tmp_path / "out"
    out.mkdir()
    big = out / "net.py"
    big.write_bytes(b"# a big file of the user's\n" + b"#" * (8 << 20))
    reads = []
    real_read = os.read

    def read(fd, n):
        data = real_read(fd, n)
        if os.readlink(f"/proc/self/fd/{fd}") == str(big):
            reads.append(len(data))
        return data

    monkeypatch.setattr(os, "read", read)
    assert _run(capsys, "build", "--no-diagram", "-o", str(out), str(_spec(tmp_path)))[0] == 2
    assert sum(reads) <= 2 * output.HEAD_BYTES


# ---------------------------------------------------------------------------------------------
# Item 10: environment failures are one line, exit 2, and leave everything as it was


def _two_specs(tmp_path: Path) -> list[str]:
    """a.arch (as `_built_once` left it: changed since its build) and a new b.arch."""
    return [
        str(tmp_path / "a.arch"),
        str(_spec(tmp_path, "b.arch", NET.replace("conv(4", "conv(6"))),
    ]


def _built_once(tmp_path: Path, capsys) -> tuple[Path, dict]:
    """An output folder with a's files from an earlier build, and its contents."""
    out = tmp_path / "out"
    assert _run(capsys, "build", "-o", str(out), str(_spec(tmp_path, "a.arch", NET)))[0] == 0
    _spec(tmp_path, "a.arch", NET.replace("conv(4", "conv(5"))  # a's output will change
    return out, _tree(out)


def test_build_into_a_file_is_a_usage_error(tmp_path, capsys):
    existing = tmp_path / "existing.txt"
    existing.write_text("mine")
    status, text = _run(capsys, "build", "-o", str(existing), str(_spec(tmp_path)))
    assert status == 2 and len(text.strip().splitlines()) == 1 and "not a directory" in text
    assert existing.read_text() == "mine"
    status, text = _run(capsys, "build", "-o", str(existing / "sub"), str(_spec(tmp_path)))
    assert status == 2 and "not a directory" in text


@pytest.mark.parametrize("fails_at", [1, 2, 4, 6])
def test_a_failed_rename_rolls_back_every_file(fails_at, tmp_path, capsys, monkeypatch):
    """Two specs, six files; os.replace fails at the Nth: the files already replaced come back,
    the new ones go, and no temporary file or backup is left."""
    out, before = _built_once(tmp_path, capsys)
    calls = []
    real_replace = os.replace

    def replace(src, dst, **kw):
        calls.append(dst)
        if len(calls) == fails_at and str(dst).startswith(str(out)):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "replace", replace)
    status, text = _run(capsys, "build", "-o", str(out), *_two_specs(tmp_path))
    assert status == 2, (text, calls)
    assert "read-only file system" in text and len(text.strip().splitlines()) == 1, text
    assert _tree(out) == before


def test_a_full_disk_is_one_line_and_changes_nothing(tmp_path, capsys, monkeypatch):
    """Writes into a temporary file go to /dev/full: the kernel's own ENOSPC."""
    out, before = _built_once(tmp_path, capsys)
    real_open = os.open
    opened = []

    def open_(path, flags, mode=0o777, **kw):
        if str(path).endswith(".tmp"):
            opened.append(path)
            real_open(path, flags, mode, **kw)  # the temporary file exists, as it would
            return real_open("/dev/full", os.O_WRONLY)
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # /dev/full has nothing to sync
    status, text = _run(capsys, "build", "-o", str(out), *_two_specs(tmp_path))
    assert opened and status == 2, text
    assert "no space left on device" in text and len(text.strip().splitlines()) == 1, text
    assert _tree(out) == before


def test_a_read_only_folder_is_one_line(tmp_path, capsys, monkeypatch):
    out, before = _built_once(tmp_path, capsys)
    real_open = os.open

    def open_(path, flags, mode=0o777, **kw):
        if str(path).endswith(".tmp"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", open_)
    status, text = _run(capsys, "build", "-o", str(out), *_two_specs(tmp_path))
    assert status == 2 and "permission denied" in text, text
    assert len(text.strip().splitlines()) == 1 and _tree(out) == before


def test_a_new_output_folder_is_removed_on_failure(tmp_path, capsys, monkeypatch):
    def fail(*_args, **_kw):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", fail)
    out = tmp_path / "new" / "deeper"
    status, text = _run(capsys, "build", "-o", str(out), str(_spec(tmp_path)))
    assert status == 2 and "input/output error" in text
    assert not (tmp_path / "new").exists()


def test_a_file_size_limit_is_one_line_and_changes_nothing(tmp_path, capsys):
    """RLIMIT_FSIZE: the kernel refuses to grow a file past 1 KiB (EFBIG; Python ignores the
    SIGXFSZ that comes with it)."""
    resource = pytest.importorskip("resource")
    out, before = _built_once(tmp_path, capsys)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    result = subprocess.run(
        [sys.executable, "-m", "resgen", "build", "-o", str(out), *_two_specs(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "file too large" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert _tree(out) == before


def test_an_interrupt_rolls_back(tmp_path, capsys, monkeypatch):
    out, before = _built_once(tmp_path, capsys)
    real_replace = os.replace
    calls = []

    def replace(src, dst, **kw):
        calls.append(dst)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "replace", replace)
    assert _run(capsys, "build", "-o", str(out), *_two_specs(tmp_path))[0] == 130
    assert _tree(out) == before


# ---------------------------------------------------------------------------------------------
# Item 17: two specs, one set of files


@pytest.mark.parametrize("second", ["sub/net.arch", "other/NET.arch"])
def test_two_specs_with_one_stem_are_refused(second, tmp_path, capsys):
    first = _spec(tmp_path, "net.arch")
    other = _spec(tmp_path, second, NET.replace("conv(4", "conv(6"))
    out = tmp_path / "out"
    status, text = _run(capsys, "build", "-o", str(out), str(first), str(other))
    assert status == 2
    assert str(first) in text and str(other) in text
    assert not out.exists()


def test_the_same_spec_twice_is_built_once(tmp_path, capsys):
    spec = _spec(tmp_path)
    status, text = _run(capsys, "build", "-o", str(tmp_path / "out"), str(spec), str(spec))
    assert status == 0 and text.count(" -> ") == 1, text
