"""Every command the docs show is run, with the real `mtlrun`, or marked as shown only.

The fence says which (docs/development.md, "Commands in the docs"):

* ```` ```bash ````: each line is a command (``\\`` continues it, ``#`` starts a comment); it must exit 0;
* ```` ```console ````: a transcript: ``$ `` lines are commands, the lines under one are output it must print
  (``...`` stands for any text); it must exit 0, or 1 where that output shows an ``error:`` line;
* ```` ```sh ````: shown only (installs, needs files or a cluster, runs long); never run.

A page's commands run in order in one fresh temporary folder, so a later block reads what an earlier one
wrote; pages run two at a time. ``debug=smoke`` is appended to every `mtlrun` command that trains. The fast
tier runs the pages in FAST_PAGES (no command of theirs trains); the slow tier runs the others.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUN_FENCES = ("bash", "console")
SHOWN_FENCES = ("sh",)
# Pages whose commands are cheap (none trains: --cfg job, --help, mistakes that stop before training); the
# fast tier runs them, the slow tier every other page with a command.
FAST_PAGES = ("docs/config/index.md", "docs/config/optim.md")
PROGRAMS = (
    "mtlrun",
    "python",
    "torchrun",
)  # what a documented command may start with (after VAR=value assignments)
NOT_TRAINING = {
    "--help",
    "-h",
    "--cfg",
    "-c",
    "--info",
    "-i",
    "--hydra-help",
    "--resolve",
    "--shell-completion",
}
SHELL_OPERATORS = {"|", "||", "&", "&&", ";", ">", ">>", "<", "2>", "2>&1"}
BIN = Path(sys.executable).parent
COMMAND_TIMEOUT_S = 300
README_MAX_LINES = 150


@dataclass
class Command:
    page: str
    line: int
    text: str  # as shown
    expected: list[str] = field(default_factory=list)  # console: output lines it must print
    tokens: list[str] = field(default_factory=list)

    @property
    def expects_error(self) -> bool:
        return any(line.startswith("error:") for line in self.expected)

    @property
    def env(self) -> dict[str, str]:
        return dict(t.split("=", 1) for t in self.tokens[: self._program_index()])

    @property
    def argv(self) -> list[str]:
        argv = self.tokens[self._program_index() :]
        if self.trains and not any(t.startswith("debug=") for t in argv):
            argv = [*argv, "debug=smoke"]
        program = BIN / argv[0]
        return [str(program) if program.exists() else argv[0], *argv[1:]]

    @property
    def trains(self) -> bool:
        argv = self.tokens[self._program_index() :]
        if argv[0] == "torchrun" and "mtlrun" in argv:  # torchrun [its options] -m mtlrun [overrides]
            argv = argv[argv.index("mtlrun") :]
        return (
            argv[0] == "mtlrun"
            and (len(argv) == 1 or argv[1] not in ("report", "predict", "groups"))
            and not NOT_TRAINING & set(argv)
        )

    def _program_index(self) -> int:
        return next(i for i, t in enumerate(self.tokens) if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", t))

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


@dataclass
class Block:
    page: str
    line: int  # of the opening fence
    lang: str
    lines: list[str]


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with the language of their info string."""
    found, current, fence = [], None, ""
    rel = str(path.relative_to(ROOT))
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if current is None:
            match = re.match(r"(`{3,}|~{3,})\s*([\w+-]*)", stripped)
            if match:
                fence, current = match.group(1), Block(rel, number, match.group(2), [])
        elif stripped.startswith(fence) and stripped.strip(fence[0]) == "":
            found.append(current)
            current = None
        else:
            current.lines.append(line)
    return found


def commands(block: Block) -> list[Command]:
    """The commands of a run block, in order."""
    out: list[Command] = []
    if block.lang == "bash":
        pending, start = "", 0
        for offset, line in enumerate(block.lines, start=1):
            if not pending:
                start = offset
            pending += line
            if pending.rstrip().endswith("\\"):
                pending = pending.rstrip()[:-1] + " "
                continue
            if pending.strip() and not pending.strip().startswith("#"):
                out.append(Command(block.page, block.line + start, pending.strip()))
            pending = ""
    elif block.lang == "console":
        for offset, line in enumerate(block.lines, start=1):
            if line.startswith("$ "):
                out.append(Command(block.page, block.line + offset, line[2:].strip()))
            elif line.strip() and out:
                out[-1].expected.append(line.strip())
    for command in out:
        command.tokens = shlex.split(command.text, comments=True)
    return out


def page_commands(path: Path) -> list[Command]:
    return [c for b in blocks(path) if b.lang in RUN_FENCES for c in commands(b)]


def squeeze(text: str) -> str:
    return " ".join(text.split())


def missing_output(expected: list[str], output: str) -> list[str]:
    """Expected lines the output lacks; ``...`` in a line stands for any text (its pieces must appear in
    order). Whitespace is compared collapsed, so wrapped log lines still match."""
    flat, missing = squeeze(output), []
    for line in expected:
        position = 0
        for piece in (squeeze(p) for p in line.split("...")):
            found = flat.find(piece, position) if piece else position
            if found < 0:
                missing.append(line)
                break
            position = found + len(piece)
    return missing


def environment(extra: dict[str, str]) -> dict[str, str]:
    env = os.environ | {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "MPLBACKEND": "Agg",
        "COLUMNS": "400",  # rich wraps log lines at the terminal width
        "OMP_NUM_THREADS": "1",  # tiny models: a second thread only adds synchronisation
        "NO_COLOR": "1",
    }
    env.pop("HYDRA_FULL_ERROR", None)
    return env | extra


@dataclass
class PageRun:
    page: str
    folder: Path
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


def run_page(path: Path, parent: Path) -> PageRun:
    """Run a page's commands in order in a new folder under ``parent``; stop at the first failure."""
    rel = str(path.relative_to(ROOT))
    result = PageRun(rel, Path(tempfile.mkdtemp(prefix=rel.replace("/", "_") + "-", dir=parent)))
    started = time.perf_counter()
    for command in page_commands(path):
        try:
            done = subprocess.run(
                command.argv,
                cwd=result.folder,
                env=environment(command.env),
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            result.failures.append(f"{command}\n  ran past {COMMAND_TIMEOUT_S} s")
            break
        output = done.stdout + done.stderr
        want = 1 if command.expects_error else 0
        problems = []
        if done.returncode != want:
            problems.append(f"exit code {done.returncode}, expected {want}")
        problems += [f"output lacks: {line}" for line in missing_output(command.expected, output)]
        if problems:
            tail = "\n    ".join(output.strip().splitlines()[-15:])
            result.failures.append(
                f"{command}\n  ran: {shlex.join(command.argv)}\n  "
                + "\n  ".join(problems)
                + f"\n  output (end):\n    {tail}"
            )
            break
        check = POST_CHECKS.get((rel, command.text))
        if check is not None:
            result.failures += [f"{command}\n  {problem}" for problem in check(result.folder)]
    result.seconds = time.perf_counter() - started
    return result


def run_pages(paths: list[Path], parent: Path) -> list[PageRun]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda p: run_page(p, parent), paths))


# ------------------------------------------------------------------------------------------- post checks


def documented_summary_keys() -> set[str]:
    """The keys of the summary.json table of docs/outputs.md (first column, backticked, comma-separated)."""
    text = (ROOT / "docs" / "outputs.md").read_text(encoding="utf-8")
    section = text.split("## summary.json", 1)[1].split("\n## ", 1)[0]
    keys: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            keys |= set(re.findall(r"`([\w.]+)`", line.split("|")[1]))
    return keys


def summary_keys_match(folder: Path) -> list[str]:
    summary = json.loads((folder / "runs" / "first" / "summary.json").read_text())
    documented = documented_summary_keys()
    problems = []
    if undocumented := sorted(set(summary) - documented):
        problems.append(f"summary.json keys missing from docs/outputs.md: {', '.join(undocumented)}")
    if stale := sorted(documented - set(summary)):
        problems.append(f"docs/outputs.md documents keys a run no longer writes: {', '.join(stale)}")
    return problems


# After the command (page, text as shown) succeeds: more checks on the folder it ran in.
POST_CHECKS = {("docs/outputs.md", "mtlrun hydra.run.dir=runs/first"): summary_keys_match}


# ------------------------------------------------------------------------------------------------ tests


def test_every_run_block_parses_into_commands_we_can_run():
    problems = []
    for path in PAGES:
        for block in blocks(path):
            if block.lang in RUN_FENCES and not commands(block):
                problems.append(f"{block.page}:{block.line}: a ```{block.lang} block without a command")
            for command in commands(block) if block.lang in RUN_FENCES else []:
                if not command.tokens:
                    problems.append(f"{command}: empty")
                    continue
                argv = command.tokens[command._program_index() :]
                if argv[0] not in PROGRAMS:
                    problems.append(
                        f"{command}: starts with {argv[0]!r}; run blocks may run {', '.join(PROGRAMS)}"
                    )
                if SHELL_OPERATORS & set(command.tokens):
                    problems.append(f"{command}: shell operators are not run; show it in a ```sh block")
    assert not problems, "\n".join(problems)


def test_shell_commands_sit_in_a_tagged_fence():
    """A block that shows an `mtlrun` command is bash or console (run) or sh (shown only), never untagged."""
    problems = []
    for path in PAGES:
        for block in blocks(path):
            if block.lang in (*RUN_FENCES, *SHOWN_FENCES, "text", "yaml", "python"):
                continue
            if any(re.match(r"\s*(\$ )?(mtlrun|make|pip|python)\b", line) for line in block.lines):
                problems.append(
                    f"{block.page}:{block.line}: ```{block.lang} holds a command; tag it bash, console or sh"
                )
    assert not problems, "\n".join(problems)


def test_fast_pages_run_nothing_that_trains():
    """(A command that stops with an `error:` before training is cheap too.)"""
    for page in FAST_PAGES:
        training = [str(c) for c in page_commands(ROOT / page) if c.trains and not c.expects_error]
        assert not training, "\n".join(training)


def test_no_page_cites_a_document_outside_the_repository():
    problems = [
        f"{path.relative_to(ROOT)}: {word}"
        for path in PAGES
        for word in ("DESIGN", "§")
        if word in path.read_text(encoding="utf-8")
    ]
    assert not problems, "\n".join(problems)


def test_the_readme_stays_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move details into docs/"


def _report(runs: list[PageRun]) -> str:
    return "\n\n".join(f for r in runs for f in r.failures)


def test_the_cheap_documented_commands_run(tmp_path):
    runs = run_pages([ROOT / page for page in FAST_PAGES], tmp_path)
    assert not any(r.failures for r in runs), _report(runs)


@pytest.mark.slow
def test_every_other_documented_command_runs(tmp_path):
    """Every page with a run block but those in FAST_PAGES: about 2 minutes on 2 cores."""
    paths = [p for p in PAGES if str(p.relative_to(ROOT)) not in FAST_PAGES and page_commands(p)]
    runs = run_pages(paths, tmp_path)
    timing = ", ".join(f"{r.page} {r.seconds:.0f} s" for r in runs)
    assert not any(r.failures for r in runs), _report(runs) + f"\n\n(times: {timing})"
