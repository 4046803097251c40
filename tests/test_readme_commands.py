"""Every ``ftlight-*`` command the README and the docs (``docs/*.md``) show works as written.

Each ``ftlight-train`` command (code blocks, continuation lines joined, and inline code) is
composed by Hydra exactly as typed; one with no placeholder and no missing file also passes
the validation pass; the ones on tiny models or the smoke preset run. Every other command's
options are ones that command has.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from ftlight.config import CONF_DIR
from ftlight.train import train
from ftlight.validate import check_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]

ILLUSTRATIONS = {"ftlight-train strategy=mine": "a plugin the reader writes (how-to section)"}
"""Commands the README shows for something that does not exist here, and why."""


def readme_commands(text: str, program: str = "ftlight-train") -> list[str]:
    """``<program> ...`` command lines of ``text``: shell code blocks, then inline code."""
    shell, outside, fence = [], [], None
    for line in text.splitlines():
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
        elif fence is None:
            outside.append(line)
        elif fence in ("", "bash", "sh"):
            shell.append(line)
    commands = []
    for line in "\n".join(shell).replace("\\\n", " ").splitlines():  # continuation lines
        for part in line.split("&&"):
            words = shlex.split(part, comments=True) if program in part else []
            if words[:1] == [program]:
                commands.append(" ".join(words))
    commands += re.findall(rf"`({program}(?: [^`]*)?)`", "\n".join(outside))
    return list(dict.fromkeys(commands))


COMMANDS = list(dict.fromkeys(c for page in PAGES for c in readme_commands(page.read_text())))
OTHER_PROGRAMS = ("ftlight-eval", "ftlight-generate", "ftlight-compare", "ftlight-strategies")
OTHER_COMMANDS = [
    c for page in PAGES for p in OTHER_PROGRAMS for c in readme_commands(page.read_text(), p)
]


def override_lists(command: str) -> tuple[list[list[str]], bool]:
    """The overrides each job of ``command`` composes (a multirun gives one list per job),
    and whether the command has placeholders such as ``<run>``."""
    words = shlex.split(command)[1:]
    placeholder = any("<" in w for w in words)
    # as a reader fills them in: <run> becomes a folder name; <same overrides> goes
    words = [re.sub(r"<([\w ]+)>", r"\1", w) for w in words if "=" in w or "<" not in w]
    overrides = []
    skip_next = False
    for word in words:
        if skip_next:
            skip_next = False
        elif word == "--cfg":
            skip_next = True  # its value names what to print
        elif word.startswith("-"):
            continue  # -m, --help: how to run, not what
        elif "=" in word:
            overrides.append(word)
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [o.input_line]
        for o in parsed
    ]
    return [list(job) for job in itertools.product(*choices)], placeholder


def _missing_files(overrides: list[str]) -> list[str]:
    paths = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].endswith("path")]
    return [p for p in paths if not Path(p).expanduser().exists()]


def _compose(overrides: list[str], run_dir: Path):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(
            config_name="config",
            overrides=[*overrides, f"run_dir={run_dir}"],
            return_hydra_config=True,
        )


def test_the_readme_commands_are_found() -> None:
    """The extraction sees the commands of every section, continuation lines joined."""
    assert "ftlight-train" in COMMANDS  # quick start, after `pip install ... &&`
    assert "ftlight-train experiment=smoke" in COMMANDS
    assert "ftlight-train -m strategy.r=4,8,16,32" in COMMANDS
    assert any(c.endswith("data.format=chat strategy=lora") for c in COMMANDS)
    assert any("data.fields.text_field=review" in c for c in COMMANDS)
    assert any("ckpt_path=<run>/checkpoints/last.ckpt" in c for c in COMMANDS)
    assert set(ILLUSTRATIONS) <= set(COMMANDS)
    assert len(COMMANDS) >= 10


@pytest.mark.parametrize("command", [c for c in COMMANDS if c not in ILLUSTRATIONS])
def test_readme_command_composes(command: str, tmp_path: Path) -> None:
    jobs, placeholder = override_lists(command)
    for overrides in jobs:
        cfg = _compose(overrides, tmp_path)
        if not placeholder and not _missing_files(overrides):
            check_config(cfg)  # every option of the command passes the validation pass


def test_readme_smoke_command_runs(tmp_path: Path) -> None:
    """``ftlight-train experiment=smoke`` as written: it trains, evaluates and exports."""
    (overrides,), _ = override_lists("ftlight-train experiment=smoke")
    result = train(_compose(overrides, tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 10
    assert metrics["before"].keys() == metrics["after"].keys() >= {"loss", "exact_match"}
    assert (tmp_path / "model" / "config.json").is_file()
    assert metrics["train"]["data_stats"]["train"] == {"rows": 64, "truncated": 0, "dropped": 0}
    assert result.exports


_MAINS = {
    "ftlight-eval": "ftlight.cli.eval",
    "ftlight-generate": "ftlight.cli.generate",
    "ftlight-compare": "ftlight.cli.compare",
    "ftlight-strategies": "ftlight.cli.strategies",
}


def _help_text(program: str, capsys: pytest.CaptureFixture, *sub: str) -> str:
    import importlib

    main = importlib.import_module(_MAINS[program]).main
    with pytest.raises(SystemExit) as done:
        main([*sub, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_the_other_commands_are_found() -> None:
    """The docs show the commands that score, answer with and compare runs."""
    programs = {c.split()[0] for c in OTHER_COMMANDS}
    assert {"ftlight-eval", "ftlight-generate", "ftlight-compare"} <= programs


@pytest.mark.parametrize("command", list(dict.fromkeys(OTHER_COMMANDS)))
def test_other_command_options_exist(command: str, capsys: pytest.CaptureFixture) -> None:
    """Every ``--option`` a docs command passes is one its program's ``--help`` lists."""
    words = shlex.split(command)
    program, args = words[0], words[1:]
    sub = [args[0]] if program == "ftlight-strategies" and args and args[0] == "new" else []
    helptext = _help_text(program, capsys, *sub)
    for option in (w.split("=", 1)[0] for w in args if w.startswith("--")):
        assert re.search(rf"(^|[\s,\[]){re.escape(option)}\b", helptext), (command, option)
