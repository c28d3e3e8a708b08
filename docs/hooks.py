"""MkDocs hook: pages that cannot drift from the code, because they are rendered from it at build time.

A page asks for generated content with a directive, an HTML comment alone on its line:

    <!-- mtlrun:conf GROUP [level=N] [docstrings] -->   every option of conf/GROUP/*.yaml: a section each,
                                                         the file verbatim (comments included); with
                                                         `docstrings`, the docstrings of its `_target_`'s module
                                                         and class (mkdocstrings)
    <!-- mtlrun:options-table GROUP -->                 a table: each option of GROUP and its first sentence
    <!-- mtlrun:conf-file PATH -->                      one file of conf/, verbatim
    <!-- mtlrun:groups-table -->                        every config group with its options
    <!-- mtlrun:reserved-task-names -->                 the reserved task names and characters (mtlrun/tasks.py)
    <!-- mtlrun:declarations GROUP NAME... -->          a table: each option of GROUP and the class-level
                                                         declarations NAME of its `_target_` class, inherited
                                                         ones included (read with ast)
    <!-- mtlrun:results NAME -->                        benchmarks/results/NAME.csv as a table, under the
                                                         date, commit, machine, command and conditions of
                                                         benchmarks/results/NAME.json
    <!-- mtlrun:figure FILE -->                         docs/assets/figures/FILE with the command that drew it
                                                         (docs/assets/figures/figures.json)

Nothing here imports mtlrun (which imports torch): YAML files are read as text, constants with ``ast``, so
the build stays fast. A directive that names something missing stops the build with an error.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import json
import posixpath
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "assets" / "figures"

DIRECTIVE = re.compile(r"^<!--[ \t]*mtlrun:(?P<name>[\w-]+)(?P<args>[^>\n]*?)[ \t]*-->[ \t]*$", re.MULTILINE)

# Config groups in the order the docs list them, with the page that documents each (relative to docs/).
GROUP_PAGES = {
    "data": "config/data.md",
    "encoder": "config/encoder.md",
    "architecture": "config/architecture.md",
    "regularizer": "config/regularizer.md",
    "weighting": "config/weighting.md",
    "optim": "config/optim.md",
    "optim/scheduler": "config/optim.md",
    "trainer": "config/trainer.md",
    "experiment": "config/experiment.md",
    "debug": "config/debug.md",
    "hparams_search": "config/hparams_search.md",
    "logger": "config/logger.md",
    "auxiliary": "config/auxiliary.md",
    "hydra/launcher": "config/hydra.md",
    "hydra/sweeper": "config/hydra.md",
    "hydra/job_logging": "config/hydra.md",
}


class DirectiveError(Exception):
    """A directive that cannot be rendered (an unknown name, a missing file)."""


# ------------------------------------------------------------------------------------------------ conf files


def options(group: str) -> list[str]:
    folder = CONF / group
    if not folder.is_dir():
        raise DirectiveError(f"conf/{group} is not a config group")
    return sorted(p.stem for p in folder.glob("*.yaml"))


def read_conf(group: str, option: str) -> str:
    return (CONF / group / f"{option}.yaml").read_text(encoding="utf-8")


def leading_comment(text: str) -> str:
    """The comment block a YAML file starts with, as one line of text (``# @package`` lines skipped)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("# @package"):
            continue
        if not line.startswith("#"):
            break
        body = line[1:].strip()
        if not body:
            break  # the first paragraph only
        lines.append(body)
    return " ".join(lines)


def first_sentence(text: str, limit: int = 240) -> str:
    """Up to the first full stop that ends a sentence (not "et al."), or the first colon, at most ``limit``."""
    match = re.search(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)\.(\s|$)|:\s", text)
    sentence = text[: match.start() + 1] if match else text
    sentence = sentence.rstrip(":").strip()
    if len(sentence) > limit:
        sentence = sentence[: limit - 1].rsplit(" ", 1)[0] + " …"
    return sentence.replace("|", "\\|")


def target_of(text: str, group: str | None = None, depth: int = 0) -> str | None:
    """The top-level ``_target_`` of a YAML file (or the one under ``data:``), read as text; a file without
    one takes it from the options of its own group that its defaults list names (``- ple``)."""
    match = re.search(r"^(?:  )?_target_:\s*([\w.]+)", text, re.MULTILINE)
    if match:
        return match.group(1)
    if group is None or depth > 5:
        return None
    for name in re.findall(r"^\s+-\s+([\w]+)\s*(?:#.*)?$", text, re.MULTILINE):
        if name != "_self_" and (CONF / group / f"{name}.yaml").exists():
            found = target_of(read_conf(group, name), group, depth + 1)
            if found:
                return found
    return None


def code_block(text: str, lang: str, title: str) -> str:
    fence = "````" if "```" in text else "```"
    return f'{fence}{lang} title="{title}"\n{text.rstrip()}\n{fence}'


def anchor(group: str, option: str, prefixed: bool) -> str:
    return f"{group.replace('/', '-')}-{option}" if prefixed else option


def render_conf(group: str, level: int = 2, docstrings: bool = False, prefixed: bool = False) -> str:
    hashes = "#" * level
    parts = []
    targets = {option: target_of(read_conf(group, option), group) for option in options(group)}
    # Options that build the same class (omoe and mmoe): its docstrings go under the option named after its
    # module (mmoe), else the first; the others link there.
    documented: dict[str, str] = {}
    for option, target in targets.items():
        if target and (target not in documented or target.split(".")[-2] == option):
            documented[target] = option
    for option, target in targets.items():
        text = read_conf(group, option)
        parts.append(f"{hashes} `{group}={option}` {{ #{anchor(group, option, prefixed)} }}")
        if docstrings and target:
            if documented[target] != option:
                home = documented[target]
                parts.append(
                    f"Builds the same class as [`{group}={home}`](#{anchor(group, home, prefixed)}), "
                    f"`{target}`, with the settings below."
                )
            else:
                parts.append(mkdocstrings_blocks(target, level + 1))
        parts.append(code_block(text, "yaml", f"conf/{group}/{option}.yaml"))
    return "\n\n".join(parts)


def mkdocstrings_blocks(target: str, heading_level: int) -> str:
    """The module docstring, then the class with its constructor signature (members left out)."""
    module = target.rpartition(".")[0]
    return (
        f"::: {module}\n"
        "    options:\n"
        "      show_root_heading: false\n"
        "      show_root_toc_entry: false\n"
        "      members: false\n\n"
        f"::: {target}\n"
        "    options:\n"
        "      show_root_heading: true\n"
        f"      heading_level: {heading_level}\n"
        "      members: false\n"
    )


def render_options_table(group: str, prefixed: bool = False) -> str:
    page = GROUP_PAGES.get(group)
    rows = ["| option | what it is |", "|---|---|"]
    for option in options(group):
        summary = first_sentence(leading_comment(read_conf(group, option)))
        rows.append(f"| [`{option}`](#{anchor(group, option, prefixed)}) | {summary} |")
    if page is None:
        raise DirectiveError(f"no page documents config group {group}")
    return "\n".join(rows)


def render_groups_table(page_uri: str) -> str:
    rows = ["| group | options | page |", "|---|---|---|"]
    for group, page in GROUP_PAGES.items():
        opts = ", ".join(f"`{o}`" for o in options(group))
        link = posixpath.relpath(page, posixpath.dirname(page_uri) or ".")
        rows.append(f"| `{group}` | {opts} | [{page.rsplit('/', 1)[-1][:-3]}]({link}) |")
    return "\n".join(rows)


# -------------------------------------------------------------------------------------- reserved task names


def assigned_names(node: ast.stmt) -> list[ast.expr]:
    """The targets a statement assigns (``x = ...`` or ``x: T = ...``); none for other statements."""
    if isinstance(node, ast.Assign):
        return node.targets
    return [node.target] if isinstance(node, ast.AnnAssign) else []


def module_constants(path: Path, names: tuple[str, ...]) -> dict[str, object]:
    """Literal values assigned to ``names`` at the top level of a Python file (read with ast, not imported)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: dict[str, object] = {}
    for node in tree.body:
        targets = assigned_names(node)
        for target in targets:
            if isinstance(target, ast.Name) and target.id in names and node.value is not None:
                found[target.id] = ast.literal_eval(node.value)
    missing = [n for n in names if n not in found]
    if missing:
        raise DirectiveError(
            f"{path.relative_to(ROOT)} no longer defines {', '.join(missing)}; update the docs"
        )
    return found


def render_reserved_task_names() -> str:
    c = module_constants(
        ROOT / "mtlrun" / "tasks.py", ("RESERVED_ROW_NAMES", "RESERVED_NAMES", "RESERVED_CHARACTERS")
    )

    def codes(values) -> str:
        return ", ".join(f"`{v}`" for v in values)

    return "\n".join(
        [
            "| reserved | why | constant in `mtlrun/tasks.py` |",
            "|---|---|---|",
            f"| {codes(c['RESERVED_ROW_NAMES'])} | metrics.csv uses its `task` column for its own rows: "
            "`all` (time per step), `model` (the model's penalty and diagnostics) | `RESERVED_ROW_NAMES` |",
            f"| {codes(sorted(c['RESERVED_NAMES']))} | keys of `heads` and `optim.groups`, where task names "
            "are keys too | `RESERVED_NAMES` |",
            f"| characters {codes(c['RESERVED_CHARACTERS'])} | `.` separates config keys, `~` joins a task pair "
            "in metrics.csv (`a~b`), `/` separates task and metric (`trainer.monitor=<task>/<metric>`) "
            "| `RESERVED_CHARACTERS` |",
        ]
    )


# ------------------------------------------------------------------------------------- class declarations


def module_path(module: str) -> Path | None:
    path = ROOT.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def class_declarations(module: str, name: str, seen: frozenset = frozenset()) -> dict[str, object]:
    """Class-level literal assignments of class ``name`` in ``module`` and of its bases within the project
    (a base's values first, the class's own on top). Bases outside the project (nn.Module) add nothing."""
    path = module_path(module)
    if path is None or (module, name) in seen:
        return {}
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = {
        alias.asname or alias.name: (node.module, alias.name)
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
    }
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)
    if cls is None:
        raise DirectiveError(f"{module} defines no class {name}")
    values: dict[str, object] = {}
    for base in cls.bases:
        if isinstance(base, ast.Name):
            where = imported.get(base.id, (module, base.id))
            values |= class_declarations(where[0], where[1], seen | {(module, name)})
    for node in cls.body:
        targets = assigned_names(node)
        for target in targets:
            if isinstance(target, ast.Name) and getattr(node, "value", None) is not None:
                with contextlib.suppress(ValueError):  # not a literal: not a declaration
                    values[target.id] = ast.literal_eval(node.value)
    return values


def render_declarations(group: str, names: list[str], prefixed: bool = False) -> str:
    rows = [
        "| option | class | " + " | ".join(f"`{n}`" for n in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for option in options(group):
        target = target_of(read_conf(group, option), group)
        if not target:
            continue
        module, _, cls = target.rpartition(".")
        values = class_declarations(module, cls)
        cells = [
            ""
            if values.get(n) is None
            else f"`{values[n]}`".replace("`True`", "yes").replace("`False`", "no")
            for n in names
        ]
        rows.append(
            f"| [`{option}`](#{anchor(group, option, prefixed)}) | `{cls}` | " + " | ".join(cells) + " |"
        )
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------ measured results


def render_results(name: str) -> str:
    table, meta = RESULTS / f"{name}.csv", RESULTS / f"{name}.json"
    for path in (table, meta):
        if not path.exists():
            raise DirectiveError(f"{path.relative_to(ROOT)} does not exist")
    record = json.loads(meta.read_text(encoding="utf-8"))
    with table.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
    facts = [
        f"**Measured** {record['date']} at commit `{record['commit']}`"
        + (f" ({record['commit_note']})" if record.get("commit_note") else "")
        + f", on {record['machine']}.",
    ]
    if record.get("conditions"):
        facts.append(f"**Conditions:** {record['conditions']}")
    out = []
    if record.get("caption"):
        out.append(record["caption"])
    out.append(" ".join(facts))
    commands = record.get("command")
    if commands:
        commands = [commands] if isinstance(commands, str) else commands
        out.append("Produced by:\n\n" + "```sh\n" + "\n".join(commands) + "\n```")
    out.append("\n".join(lines))
    out.append(f"<small>Data: `benchmarks/results/{name}.csv`, `benchmarks/results/{name}.json`.</small>")
    return "\n\n".join(out)


# ------------------------------------------------------------------------------------------------- figures


def render_figure(name: str, page_uri: str) -> str:
    path = FIGURES / name
    record_path = FIGURES / "figures.json"
    if not path.exists() or not record_path.exists():
        raise DirectiveError(
            f"{path.relative_to(ROOT)} or figures.json is missing: run scripts/docs_figures.py"
        )
    record = json.loads(record_path.read_text(encoding="utf-8"))
    link = posixpath.relpath(f"assets/figures/{name}", posixpath.dirname(page_uri) or ".")
    return (
        f"![{name}]({link})\n\n"
        f"<small>`{name}`, drawn by mtlrun itself: `{record['script']}` ran `{record['command']}` "
        f"and copied the PNG ({record['date']}, commit `{record['commit']}`, {record['machine']}).</small>"
    )


# --------------------------------------------------------------------------------------------------- hook


def parse_args(text: str) -> tuple[list[str], dict[str, str]]:
    positional, keywords = [], {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep:
            keywords[key] = value
        else:
            positional.append(token)
    return positional, keywords


def render(name: str, args: str, page_uri: str) -> str:
    positional, keywords = parse_args(args)
    if name == "conf":
        group = positional[0]
        return render_conf(
            group,
            level=int(keywords.get("level", 2)),
            docstrings="docstrings" in positional[1:],
            prefixed="prefixed" in positional[1:],
        )
    if name == "options-table":
        return render_options_table(positional[0], prefixed="prefixed" in positional[1:])
    if name == "conf-file":
        rel = positional[0]
        path = CONF / rel
        if not path.exists():
            raise DirectiveError(f"conf/{rel} does not exist")
        return code_block(path.read_text(encoding="utf-8"), "yaml", f"conf/{rel}")
    if name == "groups-table":
        return render_groups_table(page_uri)
    if name == "reserved-task-names":
        return render_reserved_task_names()
    if name == "declarations":
        names = [n for n in positional[1:] if n != "prefixed"]
        return render_declarations(positional[0], names, prefixed="prefixed" in positional[1:])
    if name == "results":
        return render_results(positional[0])
    if name == "figure":
        return render_figure(positional[0], page_uri)
    raise DirectiveError(f"unknown directive mtlrun:{name}")


def expand(markdown: str, page_uri: str) -> str:
    def replace(match: re.Match) -> str:
        try:
            return render(match.group("name"), match.group("args"), page_uri)
        except (DirectiveError, IndexError, OSError, ValueError) as err:
            raise DirectiveError(
                f"{page_uri}: <!-- mtlrun:{match.group('name')}{match.group('args')} -->: {err}"
            ) from err

    return DIRECTIVE.sub(replace, markdown)


def on_page_markdown(markdown, page, config, files):  # noqa: ARG001 (MkDocs' hook signature)
    return expand(markdown, page.file.src_uri)
