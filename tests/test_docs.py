"""The documentation's code runs: README.md and docs/*.md examples, and every module's doctests.

Fenced code blocks in the documentation follow one marker convention:

- ```` ```python ```` blocks are executed, in file order, in one namespace per file, with a
  fresh temporary directory as the working directory. bnfuse's example model is available
  through ``bnfuse.example_path()``.
- ```` ```sh ```` blocks whose first command starts with ``bnfuse `` are executed: every line
  is one ``bnfuse`` command (a trailing backslash continues it), run in-process through
  :func:`bnfuse.cli.main`, and must return 0. Such a block may hold nothing but ``bnfuse``
  commands. The working directory is the same temporary directory as the file's python
  blocks and holds the example model twice: as ``example.prototxt`` /
  ``example.caffemodel`` and as ``bnfuse/examples/example.*`` (the paths of a clone).
- ```` ```sh ```` blocks that start with any other command (``pip``, ``python``,
  ``docker``) are shown, not run: they need the network, a fresh environment or a
  container engine. ``tests/test_packaging.py`` runs the install and the command that
  stand in for them.
- ```` ```console ```` and ```` ```text ```` blocks are never run: commands on files the
  reader has and the tests do not (``deploy.prototxt``), usage synopses and program output.

Blocks of a file run in document order, python and shell interleaved, so a shell block may
use a file an earlier python block wrote, and the other way round.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import io
import pkgutil
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

import bnfuse
from bnfuse.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass
class Block:
    """One fenced code block of a Markdown file."""

    language: str
    line: int  # 1-based line of the opening fence
    text: str


def code_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of ``path`` in order (fences must start at column 0)."""
    blocks: list[Block] = []
    current: Block | None = None
    lines: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = FENCE.match(line)
        if current is None and match:
            current, lines = Block(match.group(1).lower(), number, ""), []
        elif current is not None and line.rstrip() == "```":
            current.text = "\n".join(lines) + "\n"
            blocks.append(current)
            current = None
        elif current is not None:
            lines.append(line)
    if current is not None:
        raise AssertionError(f"{path.name}:{current.line}: code block is never closed")
    return blocks


def shell_commands(text: str) -> list[str]:
    """The commands of a shell block: comments and blank lines dropped, continuations joined."""
    commands: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        commands.append(pending + line)
        pending = ""
    if pending:
        commands.append(pending)
    return commands


def runs_as_bnfuse(block: Block) -> bool:
    """Whether a block is executed through ``bnfuse.cli.main`` (see the module docstring)."""
    if block.language not in ("sh", "bash", "shell"):
        return False
    commands = shell_commands(block.text)
    return bool(commands) and commands[0].startswith("bnfuse ")


def _prepare_workdir(path: Path) -> None:
    for kind in ("prototxt", "caffemodel"):
        source = bnfuse.example_path(kind)
        shutil.copyfile(source, path / source.name)
        (path / "bnfuse" / "examples").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path / "bnfuse" / "examples" / source.name)


def _run_cli(command: str, where: str) -> None:
    argv = shlex.split(command)
    assert argv[0] == "bnfuse", f"{where}: a bnfuse shell block may only hold bnfuse commands"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv[1:])
    assert code == 0, (f"{where}: `{command}` exited {code}\n"
                       f"stdout:\n{out.getvalue()}\nstderr:\n{err.getvalue()}")


def _run_python(block: Block, namespace: dict[str, object], where: str) -> None:
    code = compile(block.text, where, "exec")
    with contextlib.redirect_stdout(io.StringIO()):
        exec(code, namespace)


@pytest.mark.parametrize("path", DOC_FILES, ids=[p.name for p in DOC_FILES])
def test_doc_examples_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _prepare_workdir(tmp_path)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for block in code_blocks(path):
        where = f"{path.name}:{block.line}"
        if block.language == "python":
            _run_python(block, namespace, where)
        elif runs_as_bnfuse(block):
            for command in shell_commands(block.text):
                _run_cli(command, where)


def test_code_block_languages_are_known() -> None:
    # Guards the marker convention: a typo such as ```pyhton would silently skip a block.
    known = {"python", "sh", "bash", "shell", "console", "text", "dockerfile", "toml", ""}
    for path in DOC_FILES:
        for block in code_blocks(path):
            assert block.language in known, (
                f"{path.name}:{block.line}: unknown code block language {block.language!r}")


# --------------------------------------------------------------------------- README contract


def _readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def _section_block(markdown: str, heading: str) -> str:
    """The first fenced block after ``heading`` (a line of the Markdown)."""
    after = markdown.split(f"\n{heading}\n", 1)
    assert len(after) == 2, f"README has no {heading!r} section"
    match = re.search(r"^```\S*\n(.*?)^```", after[1], flags=re.S | re.M)
    assert match, f"README section {heading!r} has no code block"
    return match.group(1).strip()


def test_readme_test_command_is_the_one_ci_runs() -> None:
    command = _section_block(_readme(), "## Run the tests")
    assert command == 'python -m pip install --quiet -e ".[dev]" && python -m pytest -q'
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines, ".ci/run must run the README's test command unchanged"


def test_readme_quick_start_installs_then_folds_the_example() -> None:
    command = _section_block(_readme(), "## Quick start")
    install, _, run = command.partition(" && ")
    assert install == "pip install ."
    argv = shlex.split(run)
    assert argv[:4] == ["bnfuse", "fold", "bnfuse/examples/example.prototxt",
                        "bnfuse/examples/example.caffemodel"]
    for name in argv[2:4]:
        assert (ROOT / name).is_file(), f"the quick start names {name}, which does not exist"


# --------------------------------------------------------------------------- coverage


def test_api_reference_covers_every_public_name() -> None:
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^#{2,4} `([^`]+)`", text, flags=re.M))
    missing = [name for name in bnfuse.__all__ if name not in headings]
    assert not missing, f"docs/api.md has no section for {missing}"


def _cli_options() -> dict[str, set[str]]:
    parser = build_parser()
    options: dict[str, set[str]] = {"": set()}
    for action in parser._actions:
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict):  # the sub-command table
            for name, sub in choices.items():
                options[name] = {flag for a in sub._actions for flag in a.option_strings
                                 if flag not in ("-h", "--help")}
        else:
            options[""].update(f for f in action.option_strings if f not in ("-h", "--help"))
    return options


def test_cli_reference_covers_every_command_and_option() -> None:
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    sections = re.split(r"^## ", text, flags=re.M)
    for command, flags in _cli_options().items():
        if not command:
            for flag in flags:
                assert f"`{flag}" in text or f"[{flag}" in text, f"cli.md misses {flag}"
            continue
        section = next((s for s in sections if s.startswith(f"bnfuse {command}\n")), None)
        assert section is not None, f"docs/cli.md has no '## bnfuse {command}' section"
        for flag in flags:
            assert flag in section, f"docs/cli.md, bnfuse {command}: option {flag} is missing"


def test_relative_links_point_to_existing_files() -> None:
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (path.parent / target).exists(), f"{path.name}: broken link {target}"


# --------------------------------------------------------------------------- doctests


MODULES = sorted(info.name for info in pkgutil.walk_packages(bnfuse.__path__, "bnfuse."))


@pytest.mark.parametrize("name", ["bnfuse", *MODULES])
def test_module_doctests(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(name)
    runner_out = io.StringIO()
    with contextlib.redirect_stdout(runner_out):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=True)
    assert result.failed == 0, f"doctests of {name} failed:\n{runner_out.getvalue()}"
