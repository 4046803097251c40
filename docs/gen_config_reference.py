"""The configuration reference, generated from the YAML files under ``conf/`` and each
strategy plugin's ``conf/``: every group, every option of every file, its default and the
comment written beside it (or on the lines above it).

``python docs/gen_config_reference.py`` prints the page; the docs build (``docs/hooks.py``)
adds it to the site as ``reference/configuration.md``; ``tests/test_docs.py`` fails when an
option has no comment.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: keys that say what a file builds or how, not an option a user sets
STRUCTURAL = {"_target_", "_partial_", "_convert_", "_recursive_", "defaults"}

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w\-]*):(?P<rest>.*)$")


@dataclass(frozen=True)
class Option:
    """One option of a config file: its dotted key, its default as written and its comment."""

    group: str
    file: Path
    key: str
    default: str
    comment: str
    has_children: bool


@dataclass(frozen=True)
class ConfigFile:
    """One YAML file: its group, its name, the command in its first line and its options."""

    group: str
    name: str
    path: Path
    where: str  # the path from the repository root
    usage: str
    options: tuple[Option, ...]


def _split_comment(rest: str) -> tuple[str, str]:
    """``value  # comment`` -> (value, comment); a ``#`` inside quotes stays in the value."""
    quote = None
    for i, ch in enumerate(rest):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1] in " \t"):
            return rest[:i].strip(), rest[i + 1 :].strip()
    return rest.strip(), ""


def parse_file(path: Path, group: str, root: Path = ROOT) -> ConfigFile:
    """The options of one YAML file, with the comments beside or above each."""
    lines = path.read_text().splitlines()
    usage = ""
    start = 0
    if lines and lines[0].startswith("#"):
        usage, start = lines[0].lstrip("# ").strip(), 1
    options: list[dict] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the open mappings
    pending: list[str] = []
    last: dict | None = None
    skip_indent: int | None = None  # inside a skipped block (defaults list, hydra settings)
    for line in lines[start:]:
        stripped = line.strip()
        if not stripped:
            pending = []
            continue
        indent = len(line) - len(line.lstrip(" "))
        if skip_indent is not None:
            if indent > skip_indent or stripped.startswith("- "):
                continue
            skip_indent = None
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            column = line.index("#")
            if last is not None and last["inline"] and column > last["indent"]:
                last["comment"] += " " + text  # a comment continued under the first line
            else:
                pending.append(text)
            continue
        if stripped.startswith("- "):
            continue  # a list item: part of the value above
        match = _KEY.match(line)
        if match is None:
            continue
        key = match["key"]
        value, inline = _split_comment(match["rest"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if key in STRUCTURAL or (not stack and key == "hydra"):
            if not value:
                skip_indent = indent
            pending, last = [], None
            continue
        dotted = ".".join([k for _, k in stack] + [key])
        if stack:
            for parent in options:
                if parent["key"] == ".".join(k for _, k in stack):
                    parent["children"] = True
        entry = {
            "key": dotted,
            "default": value,
            # a comment block above a key that has its own is a heading for the keys below
            "comment": inline or " ".join(pending),
            "inline": bool(inline),
            "indent": indent,
            "children": False,
        }
        options.append(entry)
        pending, last = [], entry
        if not value:
            stack.append((indent, key))
    return ConfigFile(
        group,
        path.stem,
        path,
        path.relative_to(root).as_posix(),
        usage,
        tuple(
            Option(group, path, o["key"], o["default"], o["comment"], o["children"])
            for o in options
        ),
    )


def config_files(root: Path = ROOT) -> list[ConfigFile]:
    """Every config file of the core and of the strategy plugins in this repository."""
    files = []
    conf = root / "conf"
    for path in sorted(conf.rglob("*.yaml")):
        rel = path.relative_to(conf)
        if rel.parts[:2] == ("hydra", "job_logging"):
            continue  # Python logging's own settings for Hydra, not options of a run
        group = "/".join(rel.parts[:-1]) or "(top level)"
        files.append(parse_file(path, group, root))
    for path in sorted(root.glob("plugins/*/ftlight_*/conf/strategy/*.yaml")):
        files.append(parse_file(path, "strategy", root))
    return files


def undocumented(files: list[ConfigFile]) -> list[str]:
    """``file: key`` for every option without a comment. Mappings that only group others need
    none, and neither do the presets of ``experiment/``, whose values set other groups'
    options (documented there)."""
    return [
        f"{f.where}: {o.key}"
        for f in files
        for o in f.options
        if not o.comment and not o.has_children and f.group != "experiment"
    ]


def _cell(text: str) -> str:
    return text.replace("|", "\\|") or " "


def render(files: list[ConfigFile]) -> str:
    """The reference page as Markdown."""
    out = [
        "# Configuration reference",
        "",
        "Generated from `conf/` and the strategy plugins' `conf/` at every docs build: each",
        "group, each file in it (`group=file` on the command line), its options with their",
        "defaults and what each does. Set an option with `group.key=value`",
        "(`optimizer.lr=1e-4`), a top-level one with `key=value` (`seed=1`).",
        "",
    ]
    by_group: dict[str, list[ConfigFile]] = {}
    for f in files:
        by_group.setdefault(f.group, []).append(f)
    for group in sorted(by_group, key=lambda g: (g != "(top level)", g)):
        out += [f"## `{group}`" if group != "(top level)" else "## Top level", ""]
        for f in by_group[group]:
            where = f.where
            title = f"`{group}={f.name}`" if group != "(top level)" else f"`{f.name}.yaml`"
            out += [f"### {title}", "", f"File: `{where}`."]
            if f.usage:
                out += ["", f"Example: `{f.usage}`"]
            out.append("")
            if f.options:
                out += ["| option | default | what it does |", "| --- | --- | --- |"]
                for o in f.options:
                    default = f"`{_cell(o.default)}`" if o.default else " "
                    out.append(f"| `{o.key}` | {default} | {_cell(o.comment)} |")
                out.append("")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    found = config_files()
    if "--check" in sys.argv:
        missing = undocumented(found)
        print("\n".join(missing) or "every option has a comment")
        raise SystemExit(1 if missing else 0)
    sys.stdout.write(render(found))
