"""The guarded writer: every output bnfuse writes is checked before anything is written.

Each test names the class of output it guards against: an input named another
way (relative path after ``chdir``, a file object, a hard link made after load),
a non-regular destination (a device node, a FIFO, a socket, a folder, the file
behind standard output), a symlink loop, a NUL byte, ``--json`` naming an input
or another output, and ``random-weights`` over an existing caffemodel.  Every
refusal is an :class:`~bnfuse.errors.OutputError` (exit code 1 with one
``error:`` line in the CLI), and the files involved are byte-identical after it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from modelkit import bn_blobs, conv_blobs, scale_blobs, write_model

import bnfuse
from bnfuse.cli import main
from bnfuse.errors import OutputError
from bnfuse.io.atomic import atomic_write
from bnfuse.net import save_weights

ROOT = Path(__file__).resolve().parent.parent

TEXT = """name: "guarded"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 2 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
"""


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(5)
    return write_model(folder, TEXT, {"conv": conv_blobs(rng, 3, 2), "bn": bn_blobs(rng, 3),
                                      "sc": scale_blobs(rng, 3)}, name="net")


def _state(*paths: Path) -> dict[str, object]:
    """What a path is now: its kind and, for a regular file, its bytes' hash and mtime."""
    found: dict[str, object] = {}
    for path in paths:
        info = os.lstat(path) if os.path.lexists(path) else None
        if info is None:
            found[str(path)] = None
        elif stat.S_ISREG(info.st_mode):
            found[str(path)] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(),
                                info.st_mtime_ns)
        else:
            found[str(path)] = (stat.S_IFMT(info.st_mode), info.st_ino)
    return found


@contextlib.contextmanager
def _untouched(*paths: Path) -> Iterator[None]:
    before = _state(*paths)
    yield
    assert _state(*paths) == before


def _cli(*args: str) -> tuple[int, str]:
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        code = main(list(args))
    return code, sink.getvalue()


def _one_error_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    assert "Traceback" not in text
    return lines[0]


# --- inputs named another way ---------------------------------------------------------


def test_relative_input_after_chdir_is_still_refused(model: tuple[Path, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Loaded as relative paths, saved after a chdir under the inputs' absolute names."""
    prototxt, caffemodel = model
    monkeypatch.chdir(prototxt.parent)
    net = bnfuse.load("net.prototxt", "net.caffemodel")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with _untouched(prototxt, caffemodel):
        for out_p, out_c, victim in ((tmp_path / "o.prototxt", caffemodel, caffemodel),
                                     (prototxt, tmp_path / "o.caffemodel", prototxt)):
            with pytest.raises(OutputError) as info:
                bnfuse.save(net, out_p, out_c)
            assert str(info.value).startswith(f"{victim}: is the input file net.")
            assert "choose another output path" in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "in"]
    assert os.listdir(elsewhere) == []


def test_inputs_given_as_descriptor_file_objects_are_refused(model: tuple[Path, Path],
                                                             tmp_path: Path) -> None:
    """File objects whose name is a descriptor number: identified by fstat, not by name."""
    prototxt, caffemodel = model
    with (os.fdopen(os.open(prototxt, os.O_RDONLY), "rb") as p,
          os.fdopen(os.open(caffemodel, os.O_RDONLY), "rb") as c):
        net = bnfuse.load(p, c)
    with _untouched(prototxt, caffemodel):
        with pytest.raises(OutputError, match="is the input file"):
            bnfuse.save(net, tmp_path / "o.prototxt", caffemodel)
        with pytest.raises(OutputError, match="is the input file"):
            bnfuse.save(net, prototxt, tmp_path / "o.caffemodel")
        with pytest.raises(OutputError, match="is the input file"):
            save_weights(net, caffemodel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_hard_link_made_after_load_is_refused(model: tuple[Path, Path], tmp_path: Path) -> None:
    prototxt, caffemodel = model
    net = bnfuse.fold(prototxt, caffemodel).net
    alias = tmp_path / "alias.caffemodel"
    os.link(caffemodel, alias)
    with _untouched(prototxt, caffemodel), pytest.raises(OutputError) as info:
        bnfuse.save(net, tmp_path / "o.prototxt", alias)
    assert str(info.value).startswith(f"{alias}: is the input file {caffemodel}")


def test_moved_input_is_still_refused(model: tuple[Path, Path], tmp_path: Path) -> None:
    """The input renamed after load: its new name is still the input (same inode)."""
    prototxt, caffemodel = model
    net = bnfuse.load(prototxt, caffemodel)
    moved = tmp_path / "moved.caffemodel"
    caffemodel.rename(moved)
    with _untouched(moved), pytest.raises(OutputError, match="is the input file"):
        bnfuse.save(net, tmp_path / "o.prototxt", moved)


# --- destinations that are not regular files -------------------------------------------


def _device_node(folder: Path) -> Path:
    """A private character device equal to /dev/null (root only): replacing it is the bug."""
    node = folder / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs root (the case it guards is root's)")
    return node


def _fifo(folder: Path) -> Path:
    node = folder / "fifo"
    os.mkfifo(node)
    return node


def _socket(folder: Path) -> Path:
    node = folder / "sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(node))
    server.close()
    return node


SPECIAL = {"device": (_device_node, "a character device"),
           "fifo": (_fifo, "a FIFO (named pipe)"),
           "socket": (_socket, "a socket")}


@pytest.mark.parametrize("kind", list(SPECIAL))
@pytest.mark.parametrize("which", ["-o", "-w", "--json"])
def test_special_file_destination_is_refused_and_kept(model: tuple[Path, Path], tmp_path: Path,
                                                      kind: str, which: str) -> None:
    """`-o /dev/null` as root must not turn the device into a regular file, nor a FIFO,
    nor a socket; the fold writes nothing at all."""
    prototxt, caffemodel = model
    make, words = SPECIAL[kind]
    node = make(tmp_path)
    outs = {"-o": str(tmp_path / "o.prototxt"), "-w": str(tmp_path / "o.caffemodel")}
    args = ["fold", str(prototxt), str(caffemodel), "-o", outs["-o"], "-w", outs["-w"], "-q"]
    args += [which, str(node)] if which == "--json" else []
    if which != "--json":
        args[args.index(which) + 1] = str(node)
    with _untouched(prototxt, caffemodel, node):
        code, text = _cli(*args)
    assert code == 1
    line = _one_error_line(text)
    assert line == (f"error: {node}: is {words}, not a regular file; bnfuse writes only "
                    "regular files and never replaces anything else: give a file path")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in", node.name])


def test_symlink_loop_is_an_output_error(model: tuple[Path, Path], tmp_path: Path) -> None:
    prototxt, caffemodel = model
    loop = tmp_path / "loop.caffemodel"
    loop.symlink_to(loop.name)
    net = bnfuse.fold(prototxt, caffemodel).net
    for call in (lambda: bnfuse.save(net, tmp_path / "o.prototxt", loop),
                 lambda: bnfuse.save(net, loop, tmp_path / "o.caffemodel"),
                 lambda: save_weights(net, loop)):
        with pytest.raises(OutputError) as info:
            call()
        assert str(info.value) == (f"{loop}: is a symlink loop (a link that leads back to "
                                   "itself); give a file path")
    code, text = _cli("fold", str(prototxt), str(caffemodel), "-w", str(loop), "-q")
    assert code == 1
    assert "is a symlink loop" in _one_error_line(text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "loop.caffemodel"]


def test_write_protected_destination_is_not_replaced(model: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    """chmod a-w protects trained weights from `cp`; the rename must not bypass it."""
    prototxt, caffemodel = model
    protected = tmp_path / "keep.caffemodel"
    protected.write_bytes(b"trained elsewhere")
    protected.chmod(0o444)
    with _untouched(protected):
        code, text = _cli("fold", str(prototxt), str(caffemodel), "-o",
                          str(tmp_path / "o.prototxt"), "-w", str(protected), "-q")
    assert code == 1
    assert _one_error_line(text) == (
        f"error: {protected}: is write-protected (mode 0444); bnfuse does not replace a file "
        "nobody may write: make it writable first or choose another path")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "keep.caffemodel"]


def test_nul_byte_and_trailing_separator_are_output_errors(model: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    prototxt, caffemodel = model
    net = bnfuse.load(prototxt, caffemodel)
    with pytest.raises(OutputError, match="the output path contains a NUL byte"):
        bnfuse.save(net, tmp_path / "a\x00b.prototxt")
    with pytest.raises(OutputError, match="is not a file name; give an output file name"):
        bnfuse.save(net, str(tmp_path / "nowhere") + os.sep)
    with pytest.raises(OutputError, match="is a folder; give an output file name"):
        bnfuse.save(net, str(tmp_path) + os.sep)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_standard_output_only_through_dash(model: tuple[Path, Path], tmp_path: Path) -> None:
    """`--json /dev/stdout` with stdout redirected to a file would replace that file
    (the rename) and lose what was printed before: refused; `--json -` prints."""
    prototxt, _ = model
    log = tmp_path / "log.txt"
    script = textwrap.dedent(f"""
        import sys
        print("line printed before", flush=True)
        from bnfuse.cli import main
        sys.exit(main(["inspect", {str(prototxt)!r}, "--json", "/dev/stdout"]))
    """)
    with log.open("wb") as sink:
        result = subprocess.run([sys.executable, "-c", script], stdout=sink,
                                stderr=subprocess.PIPE, text=True, timeout=120, check=False,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 1
    assert result.stderr == ("error: /dev/stdout: is this process's standard output; bnfuse "
                             "writes standard output only when asked with '-' (as in --json -)\n")
    assert log.read_text() == "line printed before\n"
    code, text = _cli("inspect", str(prototxt), "--json", "-")
    assert code == 0 and text.lstrip().startswith("{")


# --- --json against inputs and outputs -------------------------------------------------


def test_json_over_the_trained_weights_is_refused_before_anything_is_written(
        model: tuple[Path, Path]) -> None:
    """`bnfuse fold a.prototxt a.caffemodel --json a.caffemodel` used to replace the
    weights with the report (exit 0)."""
    prototxt, caffemodel = model
    folder = prototxt.parent
    with _untouched(prototxt, caffemodel):
        code, text = _cli("fold", str(prototxt), str(caffemodel), "--json", str(caffemodel))
    assert code == 1
    assert _one_error_line(text) == (
        f"error: {caffemodel}: is the input file {caffemodel}; writing it would destroy the "
        "input, choose another output path")
    # Refused before the fold: not even the default outputs were written.
    assert sorted(p.name for p in folder.iterdir()) == ["net.caffemodel", "net.prototxt"]


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_json_over_an_input_is_refused_by_every_command(model: tuple[Path, Path],
                                                        command: str) -> None:
    prototxt, caffemodel = model
    inputs = [str(prototxt), str(caffemodel)]
    args = [command, *inputs, *(inputs if command == "verify" else []), "--json", str(prototxt)]
    with _untouched(prototxt, caffemodel):
        code, text = _cli(*args)
    assert code == 1
    assert _one_error_line(text).startswith(f"error: {prototxt}: is the input file ")


def test_json_over_an_output_is_refused(model: tuple[Path, Path], tmp_path: Path) -> None:
    prototxt, caffemodel = model
    out_p, out_c = tmp_path / "o.prototxt", tmp_path / "o.caffemodel"
    code, text = _cli("fold", str(prototxt), str(caffemodel), "-o", str(out_p), "-w",
                      str(out_c), "--json", str(out_c), "-q")
    assert code == 1
    assert _one_error_line(text) == (
        f"error: {out_c}: the caffemodel and --json outputs are the same file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_json_is_written_beside_a_successful_fold(model: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    prototxt, caffemodel = model
    report = tmp_path / "r.json"
    code, _ = _cli("fold", str(prototxt), str(caffemodel), "-o", str(tmp_path / "o.prototxt"),
                   "-w", str(tmp_path / "o.caffemodel"), "--json", str(report), "-q")
    assert code == 0
    assert report.read_text().startswith('{\n  "prototxt": ')


# --- random-weights over trained weights ------------------------------------------------


def test_random_weights_never_replaces_the_default_caffemodel_silently(
        model: tuple[Path, Path]) -> None:
    prototxt, caffemodel = model
    with _untouched(prototxt, caffemodel):
        code, text = _cli("random-weights", str(prototxt), "-q")
    assert code == 1
    assert _one_error_line(text) == (
        f"error: {caffemodel}: exists, and random-weights would replace it with random weights; "
        f"name it with -w {caffemodel} to replace it, or pass --force")
    trained = caffemodel.read_bytes()
    # Named explicitly, or forced: replaced, and the new weights are random ones.
    assert _cli("random-weights", str(prototxt), "-w", str(caffemodel), "-q")[0] == 0
    assert caffemodel.read_bytes() != trained
    caffemodel.write_bytes(trained)
    assert _cli("random-weights", str(prototxt), "--force", "--seed", "2", "-q")[0] == 0
    assert caffemodel.read_bytes() != trained
    assert bnfuse.load(prototxt, caffemodel).layer("conv").blobs[0].shape == (3, 2, 3, 3)


def test_random_weights_without_a_caffemodel_writes_the_default(model: tuple[Path, Path]) -> None:
    prototxt, caffemodel = model
    caffemodel.unlink()
    assert _cli("random-weights", str(prototxt), "-q")[0] == 0
    assert bnfuse.load(prototxt, caffemodel).layer("bn").blobs[2].shape == (1,)


def test_random_weights_output_is_never_the_prototxt(model: tuple[Path, Path]) -> None:
    prototxt, _ = model
    with _untouched(prototxt):
        code, text = _cli("random-weights", str(prototxt), "-w", str(prototxt), "-q")
    assert code == 1
    assert _one_error_line(text).startswith(f"error: {prototxt}: is the input file ")


# --- the writer itself -------------------------------------------------------------------


def test_atomic_write_refuses_file_identity_of_an_open_descriptor(tmp_path: Path) -> None:
    """inputs may be identities taken at read time: a file renamed since is still found."""
    from bnfuse.io.guard import identify

    src = tmp_path / "in.bin"
    src.write_bytes(b"trained")
    identity = identify(src)
    src.rename(tmp_path / "renamed.bin")
    with pytest.raises(OutputError, match="is the input file"), \
            atomic_write(tmp_path / "renamed.bin", inputs=[identity]):
        pass
    assert (tmp_path / "renamed.bin").read_bytes() == b"trained"


def test_check_destination_resolves_a_symlink_to_its_file(tmp_path: Path) -> None:
    from bnfuse.io.guard import check_destination

    real = tmp_path / "real.bin"
    link = tmp_path / "link.bin"
    link.symlink_to(real.name)
    target = check_destination(link)
    assert (target.shown, target.path) == (str(link), str(real))
