"""``ftlight-compare`` and the sweep callback: the table comes from each run's own files,
failed and unfinished runs stay listed, the recommendation follows its rule, and a real
multirun writes its comparison into the sweep folder."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ftlight.cli.compare import main
from ftlight.config import CONF_DIR
from ftlight.errors import ConfigError
from ftlight.sweeps.callback import NAME_LIMIT, SweepComparison, trial_name
from ftlight.sweeps.compare import compare, recommend
from ftlight.sweeps.report import format_console, table, to_markdown, write_csv
from ftlight.sweeps.runs import parse_overrides

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RANKS = (1, 2, 4, 8, 16, 32, 64)
ACCURACY = dict(zip(RANKS, (0.70, 0.85, 0.906, 0.91, 0.912, 0.915, 0.913), strict=True))
HEAD = 2310  # the classifier, trained with every LoRA rank


def make_run(
    root: Path,
    name: str,
    *,
    strategy: str = "lora",
    r: int | None = 8,
    task: str = "classification",
    overrides: tuple[str, ...] = (),
    metrics: dict[str, Any] | None = None,
    adapter_bytes: int = 2048,
) -> Path:
    """A run folder as ftlight-train leaves it: .hydra/ files, metrics.json, an export."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    strategy_cfg = {"_target_": f"ftlight_{strategy}.Strategy", **({"r": r} if r else {})}
    config = {"strategy": strategy_cfg, "trainer": {"accelerator": "cpu"}}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    choices = {"strategy": strategy, "task": task, "model": "tiny-bert"}
    hydra = {"hydra": {"runtime": {"choices": choices}}}
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    if metrics is not None:
        export = "adapter" if r else "model"
        (run / export).mkdir()
        (run / export / "weights.safetensors").write_bytes(b"\0" * adapter_bytes)
        full = {"strategy": strategy, "task": task, "exports": {export: str(run / export)}}
        (run / "metrics.json").write_text(json.dumps({**full, **metrics}))
    return run


def scores(accuracy: float, trainable: int, total: int = 100_000) -> dict[str, Any]:
    """A metrics.json body: accuracy before 0.1, everything a run records."""
    return {
        "params": {"trainable": trainable, "total": total},
        "before": {"accuracy": 0.1, "f1_macro": 0.05, "loss": 1.8},
        "after": {"accuracy": accuracy, "f1_macro": accuracy - 0.01, "loss": 0.3},
        "throughput": {"real_tokens_per_s": 512.0, "peak_memory_mb": 2000.0},
        "train": {"steps": 30, "seconds": 12.25},
    }


@pytest.fixture
def rank_sweep(tmp_path: Path) -> Path:
    """A sweep folder of seven LoRA ranks, named as the sweep names them."""
    sweep = tmp_path / "sweep"
    for num, r in enumerate(RANKS):
        make_run(
            sweep,
            f"{num}_strategy.r={r}",
            r=r,
            overrides=(f"strategy.r={r}", "experiment=rank-sweep"),
            metrics=scores(ACCURACY[r], 1000 * r + HEAD),
        )
    return sweep


def test_table_is_built_from_each_runs_own_files(rank_sweep: Path) -> None:
    c = compare([rank_sweep])
    assert [r.name for r in c.runs] == [f"{n}_strategy.r={r}" for n, r in enumerate(RANKS)]
    assert c.metric == "accuracy"  # the task's main metric: classification
    assert c.varying == ["strategy.r"]  # experiment=rank-sweep is the same in every run
    head, rows = table(c)
    assert head == [
        *("run", "strategy", "r", "trainable", "%", "accuracy before", "after", "change"),
        *("train s", "tokens/s", "peak MB", "saved", "status"),
    ]
    # r=4: 4 x 1000 adapter parameters + the 2,310-parameter head, of 100,000
    assert rows[2] == [
        *("2_strategy.r=4", "lora", "4", "6,310", "6.31", "0.100", "0.906", "+0.806"),
        *("12.2", "512", "2000", "2.0 KB (adapter/)", "ok"),
    ]
    rows_csv = list(csv.DictReader(io.StringIO(write_csv(c))))
    assert [row["strategy.r"] for row in rows_csv] == [str(r) for r in RANKS]
    assert rows_csv[2]["after/f1_macro"] == str(0.906 - 0.01)  # every metric, not only the main
    assert rows_csv[2]["saved_bytes"] == "2048"
    assert rows_csv[2]["train_seconds"] == "12.25"


def test_peak_memory_of_a_trial_is_its_own(rank_sweep: Path) -> None:
    """Trials of a local sweep share one process: each counts its rise over its start, plus
    the process's memory after imports (the sweep's smallest start)."""
    for name, start, peak in (("0_strategy.r=1", 400.0, 1400.0), ("1_strategy.r=2", 900.0, 1700.0)):
        trial = {"status": "completed", "rss_at_start_mb": start, "peak_rss_mb": peak}
        (rank_sweep / name / "trial.json").write_text(json.dumps(trial))
    c = compare([rank_sweep])
    assert [c.peak_memory_mb(r) for r in c.runs[:3]] == [1400.0, 1200.0, 2000.0]
    assert [row[-3] for row in table(c)[1][:2]] == ["1400", "1200"]


def test_rank_sweep_recommends_the_smallest_rank_within_a_point(rank_sweep: Path) -> None:
    pick, lines = recommend(compare([rank_sweep]))
    assert pick is not None and pick.rank == 4
    # best: r=32 (0.915); r=4 (0.906) is within 0.01 with 34,310 / 6,310 = 5.4x fewer parameters
    assert lines == [
        "r=4 reaches 0.906 accuracy, within 1 point of the best (r=32, 0.915), with 5.4x fewer "
        "trainable parameters (6,310 vs 34,310)."
    ]
    pick, lines = recommend(compare([rank_sweep], tolerance=0.001))
    assert pick is not None and pick.rank == 32
    assert lines[0] == (
        "r=32 scores best (0.915 accuracy), and no run with fewer trainable parameters comes "
        "within 0.1 points of it (next: r=64, 0.913)."
    )
    pick, _ = recommend(compare([rank_sweep], tolerance=0.07))
    assert pick is not None and pick.rank == 2  # 0.915 - 0.85 = 0.065


def test_strategies_recommend_the_fewest_trainable_parameters(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    runs = {
        "full": (None, 0.93, 22_715_526),
        "head": (None, 0.60, 2_310),
        "lora": (8, 0.925, 340_230),
        "qlora": (8, 0.921, 340_230),
    }
    for num, (name, (r, acc, trainable)) in enumerate(runs.items()):
        metrics = scores(acc, trainable, total=23_055_756)
        make_run(sweep, f"{num}_strategy={name}", strategy=name, r=r,
                 overrides=(f"strategy={name}",), metrics=metrics)  # fmt: skip
    c = compare([sweep])
    assert [c.label(r) for r in c.runs] == ["full", "head", "lora r=8", "qlora r=8"]
    pick, lines = recommend(c)
    # lora and qlora tie on parameters: the higher score wins; 22,715,526 / 340,230 = 66.8
    assert pick is not None and pick.strategy == "lora"
    assert lines == [
        "lora r=8 reaches 0.925 accuracy, within 1 point of the best (full, 0.930), with 67x "
        "fewer trainable parameters (340,230 vs 22,715,526)."
    ]
    assert table(c)[0][:3] == ["run", "strategy", "r"]  # r is shown: strategies differ


def test_failed_and_incomplete_runs_are_listed(rank_sweep: Path) -> None:
    make_run(
        rank_sweep,
        "7_strategy.r=128",
        r=128,
        overrides=("strategy.r=128", "experiment=rank-sweep"),
    )
    failed = make_run(
        rank_sweep, "8_strategy.r=0", r=0, overrides=("strategy.r=0", "experiment=rank-sweep")
    )
    trial = {"status": "failed", "error": "strategy.r=0 must be a positive integer"}
    (failed / "trial.json").write_text(json.dumps(trial))
    crashed = make_run(
        rank_sweep,
        "9_strategy.r=256",
        r=256,
        overrides=("strategy.r=256", "experiment=rank-sweep"),
    )
    (crashed / "ftlight.log").write_text(
        "[2026-12-01 10:00:00,000][ftlight][INFO] - load tiny-bert: 0.0 s\n"
        "[2026-12-01 10:00:01,000][ftlight][ERROR] - no space left on /runs\n"
    )
    c = compare([rank_sweep])
    status = {r.name: (r.status, r.note) for r in c.runs}
    assert status["7_strategy.r=128"] == (
        "incomplete",
        "nothing but .hydra/: stopped before the run started",
    )
    assert status["8_strategy.r=0"] == ("failed", "strategy.r=0 must be a positive integer")
    assert status["9_strategy.r=256"] == ("failed", "no space left on /runs")
    rows = {row[0]: row for row in table(c)[1]}
    assert rows["8_strategy.r=0"][-1] == "failed: strategy.r=0 must be a positive integer"
    assert rows["7_strategy.r=128"][3:8] == ["-", "-", "-", "-", "-"]
    assert recommend(c)[0].rank == 4  # unfinished runs are not candidates
    assert "| 9_strategy.r=256 |" in to_markdown(c)


def test_runs_of_different_tasks_are_refused(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a", metrics=scores(0.9, 100))
    b = make_run(tmp_path, "b", task="causal_lm", metrics=scores(0.9, 100))
    with pytest.raises(ConfigError, match="cannot compare runs of different tasks") as err:
        compare([a, b])
    assert "task=classification: a" in str(err.value) and "task=causal_lm: b" in str(err.value)


def test_main_metric_rule(tmp_path: Path) -> None:
    """Classification: accuracy; causal LM: json/exact_match, else exact_match, else loss."""
    lm = {"loss": 0.5, "exact_match": 0.4, "json/exact_match": 0.6}
    for i, keys in enumerate((lm, {"loss": 0.5, "exact_match": 0.4}, {"loss": 0.5})):
        body = {**scores(0.0, 10), "before": keys, "after": keys}
        make_run(tmp_path / str(i), "run", task="causal_lm", metrics=body)
    assert [compare([tmp_path / str(i)]).metric for i in range(3)] == [
        "json/exact_match",
        "exact_match",
        "loss",
    ]
    assert compare([tmp_path / "2"]).lower_is_better
    assert compare([tmp_path / "0"], metric="loss").metric == "loss"
    with pytest.raises(ConfigError, match="--metric accuracy: no run reports it"):
        compare([tmp_path / "0"], metric="accuracy")


def test_nothing_to_compare_is_said_plainly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no run folders"):
        compare([tmp_path])
    with pytest.raises(ConfigError, match="is not a folder"):
        compare([tmp_path / "missing"])
    with pytest.raises(ConfigError, match="--tolerance -1"):
        compare([tmp_path], tolerance=-1)


def test_overrides_file_parsing() -> None:
    lines = ["strategy.r=8", "+trainer.enable_progress_bar=false", "~callbacks.progress", "x="]
    assert parse_overrides(lines) == {
        "strategy.r": "8",
        "trainer.enable_progress_bar": "false",
        "callbacks.progress": "(removed)",
        "x": "",
    }


def test_command_prints_and_writes_the_comparison(rank_sweep: Path, capsys) -> None:
    main([str(rank_sweep)])
    out = capsys.readouterr().out
    assert "r=4 reaches 0.906 accuracy" in out
    assert out.splitlines()[0].split()[:3] == ["run", "strategy", "r"]
    md = (rank_sweep / "compare.md").read_text()
    assert "| 2_strategy.r=4 | lora | 4 | 6,310 |" in md
    assert "![accuracy after training vs trainable parameters](compare.png)" in md
    assert (rank_sweep / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((rank_sweep / "compare.csv").read_text().splitlines()) == 1 + len(RANKS)
    with pytest.raises(SystemExit) as err:
        main([str(rank_sweep / "nothing-here")])
    assert err.value.code == 2
    assert "is not a folder" in capsys.readouterr().err


def test_callback_prints_the_comparison_when_the_sweep_ends(rank_sweep: Path, capsys) -> None:
    SweepComparison().on_multirun_end(
        OmegaConf.create({"hydra": {"sweep": {"dir": str(rank_sweep)}}})
    )
    out = capsys.readouterr().out
    assert "r=4 reaches 0.906 accuracy" in out
    assert f"wrote {rank_sweep / 'compare.md'}" in out
    assert format_console(compare([rank_sweep])) in out


def test_trial_folders_are_named_by_their_overrides() -> None:
    overrides = ["experiment=rank-sweep", "strategy.r=8", "optimizer.lr=0.01", "seed=1"]
    overrides += ["+logger.wandb.api_key=abcd1234", "model=hf", "model.name_or_path=org/m"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    subdir = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"]
    assert subdir.startswith("${hydra.job.num}_${ftlight.trial_name:${hydra.overrides.task},")
    exclude = cfg.hydra.job.config.override_dirname.exclude_keys
    name = trial_name(cfg.hydra.overrides.task, exclude)
    # sorted; experiment (the same in every trial) left out; the secret masked; the Hub id's
    # "/" opens no subfolder
    assert name == (
        "+logger.wandb.api_key=***,model.name_or_path=org_m,model=hf,optimizer.lr=0.01,"
        "seed=1,strategy.r=8"
    )
    long = trial_name([f"data.fields.f{i}=column_{i}" for i in range(40)])
    assert len(long.encode()) <= NAME_LIMIT and long != trial_name(["data.fields.f0=x"] * 40)
    assert cfg.hydra.callbacks.compare._target_ == "ftlight.sweeps.callback.SweepComparison"
    assert OmegaConf.to_container(cfg.hydra.sweeper.params) == {"strategy.r": "1,2,4,8,16,32,64"}


def test_presets_compose_for_a_causal_lm(compose, tmp_path: Path) -> None:
    for preset in ("rank-sweep", "compare-strategies"):
        cfg = compose([f"experiment={preset}", "model=tiny-llama", "task=causal_lm"], tmp_path)
        assert cfg.model._target_.endswith("TinyModel")
        assert cfg.task._target_.endswith("CausalLMTask")
    cfg = compose(["experiment=compare-strategies"], tmp_path)
    assert OmegaConf.to_container(cfg.hydra.sweeper.params) == {
        "strategy": "full,head,lora,qlora",
        "optimizer.lr": "1.0e-4,2.0e-3",
    }


def test_a_real_sweep_writes_its_comparison(tmp_path: Path) -> None:
    """Three trials of a tiny Llama: r=1 and r=2 train; r=0 fails and the sweep goes on."""
    conf = tmp_path / "conf" / "experiment"
    conf.mkdir(parents=True)
    preset = {
        "defaults": [
            {"override /model": "tiny-llama"},
            {"override /task": "causal_lm"},
            {"override /data": "local"},
            {"override /logger": "none"},
        ],
        "data": {
            "train_path": str(FIXTURES / "alpaca_train.jsonl"),
            "val_path": str(FIXTURES / "alpaca_val.jsonl"),
        },
        "task": {"max_new_tokens": 4},
        "trainer": {
            "precision": "32-true",
            "max_steps": 2,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "callbacks": {"progress": None},
        "eval": {"plots": False},
        "hydra": {"sweeper": {"params": {"strategy.r": "1,0,2"}}},
    }
    text = "# @package _global_\n" + yaml.safe_dump(preset, sort_keys=False)
    (conf / "tiny-sweep.yaml").write_text(text)
    sweep = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    args = [
        *(sys.executable, "-m", "ftlight", "-m", "experiment=tiny-sweep"),
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        f"hydra.sweep.dir={sweep}",
    ]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0  # Hydra reports the failed trial once the others have run
    assert "strategy.r=0 must be a positive integer" in done.stderr
    names = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert names == ["0_strategy.r=1", "1_strategy.r=0", "2_strategy.r=2"]
    for name in names:
        trial = json.loads((sweep / name / "trial.json").read_text())
        assert trial["status"] == ("failed" if name == "1_strategy.r=0" else "completed")
        assert trial["peak_rss_mb"] > 0
    md = (sweep / "compare.md").read_text()
    assert "| 0_strategy.r=1 | lora | 1 |" in md and "| 2_strategy.r=2 | lora | 2 |" in md
    assert "failed: strategy.r=0 must be a positive integer" in md
    rows = list(csv.DictReader(io.StringIO((sweep / "compare.csv").read_text())))
    assert [(r["strategy.r"], r["status"]) for r in rows] == [
        ("1", "ok"),
        ("0", "failed"),
        ("2", "ok"),
    ]
    # tiny Llama: 2 layers x 7 linear layers; r=2 has twice the adapter parameters of r=1
    assert int(rows[2]["trainable"]) == 2 * int(rows[0]["trainable"])
    assert (sweep / "compare.png").is_file()


def test_runs_given_by_relative_and_absolute_paths(rank_sweep: Path, monkeypatch) -> None:
    """``ftlight-compare a b`` from the folder that holds them, and a mix of both spellings."""
    monkeypatch.chdir(rank_sweep)
    runs = sorted(p.name for p in rank_sweep.iterdir() if p.is_dir())[:2]
    relative = compare([Path(runs[0]), Path(runs[1])])
    assert [r.name for r in relative.runs] == runs
    mixed = compare([Path(runs[0]), rank_sweep / runs[1]])
    assert [r.name for r in mixed.runs] == runs
    monkeypatch.chdir(rank_sweep.parent)
    below = compare([Path("sweep")])
    assert [r.name for r in below.runs][:2] == runs
