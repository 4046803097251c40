"""Secrets stay out of files: credential-like settings are masked in everything a run writes."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ftlight.redact import MASK, is_secret_key, redact, redact_yaml_files, secrets_in
from ftlight.testing import BASE, setup_overrides

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize(
    "name",
    ["api_key", "key", "token", "hf_token", "access_token", "secret", "password", "passwd",
     "secret_token", "WANDB_API_KEY", "apiKey", "client_secret", "db_password_file"],
)  # fmt: skip
def test_credential_names_are_secret(name: str) -> None:
    assert is_secret_key(name)


@pytest.mark.parametrize(
    "name",
    ["max_new_tokens", "pad_token_id", "tokenizer", "cache_tokenized", "eos_token", "pad_token",
     "num_tokens", "label_id", "keys_ids", "monitor", "name_or_path", "", None, 3],
)  # fmt: skip
def test_ordinary_settings_are_not(name) -> None:
    assert not is_secret_key(name)


def test_redact_masks_values_assignments_and_repeats() -> None:
    cfg = OmegaConf.create(
        {
            "secret_token": "abc123xyz",
            "notes": {"hf_token": "hf_top", "text": "uses abc123xyz", "from_env": None},
            "env_key": "${oc.env:SOME_TOKEN_VAR}",  # where the secret is, not the secret
            "task": {"max_new_tokens": 8, "pad_token_id": 2},
        }
    )
    overrides = ["+secret_token=abc123xyz", "+notes.hf_token=hf_top", "task.max_new_tokens=8"]
    clean = redact({"cfg": cfg, "overrides": overrides, "dirname": ",".join(overrides)})
    assert clean["cfg"] == {
        "secret_token": MASK,
        "notes": {"hf_token": MASK, "text": f"uses {MASK}", "from_env": None},
        "env_key": "${oc.env:SOME_TOKEN_VAR}",
        "task": {"max_new_tokens": 8, "pad_token_id": 2},
    }
    assert clean["overrides"] == [f"+secret_token={MASK}", f"+notes.hf_token={MASK}", overrides[2]]
    assert clean["dirname"] == ",".join(clean["overrides"])
    assert OmegaConf.to_container(cfg)["secret_token"] == "abc123xyz"  # a copy: cfg unchanged


def test_a_value_from_the_environment_is_known_as_a_secret(monkeypatch) -> None:
    monkeypatch.setenv("FTLIGHT_TEST_TOKEN", "from-the-env-42")
    cfg = OmegaConf.create({"hf_token": "${oc.env:FTLIGHT_TEST_TOKEN}", "note": "x"})
    assert secrets_in(cfg) == {"from-the-env-42"}
    assert redact({"log": "token from-the-env-42 used"}, secrets_in(cfg), by_key=False) == {
        "log": f"token {MASK} used"
    }


def test_metric_names_are_not_masked_by_key() -> None:
    metrics = {"after": {"json/field_acc/key": 0.5}, "data": "train.jsonl abc123xyz"}
    assert redact(metrics, {"abc123xyz"}, by_key=False) == {
        "after": {"json/field_acc/key": 0.5},
        "data": f"train.jsonl {MASK}",
    }


def test_hydra_files_are_rewritten_only_when_they_hold_a_secret(tmp_path) -> None:
    (tmp_path / "overrides.yaml").write_text("- +secret_token=abc123xyz\n- seed=1\n")
    (tmp_path / "config.yaml").write_text("seed: 1\n")
    assert redact_yaml_files(tmp_path) == [tmp_path / "overrides.yaml"]
    assert OmegaConf.load(tmp_path / "overrides.yaml") == [f"+secret_token={MASK}", "seed=1"]
    assert (tmp_path / "config.yaml").read_text() == "seed: 1\n"


SECRETS = {"abc123xyz": "+secret_token", "hf_topsecret42": "+notes.hf_token"}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ftlight-train`` with secret overrides, CSV logger, evaluation after and export."""
    root = tmp_path_factory.mktemp("secrets")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FTLIGHT_TEST_KEY": "envsecret99"}
    args = [
        "model=tiny-llama",
        "data=local",
        f"data.train_path={FIXTURES / 'alpaca_train.jsonl'}",
        f"data.val_path={FIXTURES / 'alpaca_val.jsonl'}",
        "trainer=cpu",
        "trainer.precision=32-true",
        "trainer.max_steps=1",
        "callbacks.progress=null",
        "logger=csv",
        "eval.before=false",
        "eval.plots=false",
        "task.max_new_tokens=4",
        *(f"{key}={value}" for value, key in SECRETS.items()),
        "+notes.api_key=${oc.env:FTLIGHT_TEST_KEY}",
        f"hydra.run.dir={root / 'run'}",
    ]
    cmd = [sys.executable, "-m", "ftlight", *args]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run"


def test_no_file_of_the_run_holds_a_secret(cli_run: Path) -> None:
    files = [p for p in cli_run.rglob("*") if p.is_file()]
    names = {str(p.relative_to(cli_run)) for p in files}
    expected = {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml"}
    expected |= {"logs/hparams.yaml", "metrics.json", "model/README.md", "model/ftlight.json"}
    assert expected <= names
    for path in files:
        data = path.read_bytes()
        for secret in [*SECRETS, "envsecret99"]:
            assert secret.encode() not in data, f"{secret} in {path}"


def test_the_masked_files_still_say_what_was_set(cli_run: Path) -> None:
    overrides = OmegaConf.to_container(OmegaConf.load(cli_run / ".hydra" / "overrides.yaml"))
    assert f"+secret_token={MASK}" in overrides and f"+notes.hf_token={MASK}" in overrides
    assert "+notes.api_key=${oc.env:FTLIGHT_TEST_KEY}" in overrides
    for name in (".hydra/config.yaml", "logs/hparams.yaml"):
        cfg = OmegaConf.load(cli_run / name)
        assert cfg.secret_token == MASK and cfg.notes.hf_token == MASK, name
        assert OmegaConf.to_container(cfg.notes)["api_key"] == "${oc.env:FTLIGHT_TEST_KEY}"
        assert cfg.task.max_new_tokens == 4, name  # ordinary settings untouched
    card = (cli_run / "model" / "README.md").read_text()
    assert f"secret_token: '{MASK}'" in card


def test_the_wandb_config_holds_no_secret(helpers, tmp_path, monkeypatch) -> None:
    """W&B (offline) records the hyper-parameters ftlight logs: masked."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    overrides = [
        *helpers.QUICK_FIT,
        "trainer.max_steps=1",
        "eval.before=false",
        "eval.after=false",
        "eval.export=false",
        "logger=wandb",
        "logger.wandb.offline=true",
        "+secret_token=abc123xyz",
    ]
    helpers.train(helpers.compose(overrides, tmp_path, "causal_lm"))
    import wandb

    wandb.finish()  # Lightning leaves the run open
    (record,) = tmp_path.glob("wandb/offline-run-*/*.wandb")
    for _ in range(60):  # W&B's service process writes the record after finish() returns
        if b"secret_token" in record.read_bytes():  # the logged config is in there
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"no config in {record}")
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"abc123xyz" not in path.read_bytes(), path


# -- log records, the resume hint and a sweep's multirun.yaml ---------------------------------
def test_log_records_are_masked_while_a_run_holds_its_secrets(caplog) -> None:
    """Message, arguments and traceback; assignments of secret keys too; not after the block."""
    from ftlight.redact import masked_logs

    log = logging.getLogger("ftlight.test")
    with caplog.at_level(logging.INFO, logger="ftlight.test"):
        with masked_logs({"abc123xyz"}):
            log.info("resume with +hf_token=%s seed=%d", "hf_unknown77", 3)
            try:
                raise ValueError("bad key abc123xyz")
            except ValueError:
                log.exception("failed with %s", "abc123xyz")
        log.info("after: abc123xyz")
    assert caplog.messages == [
        f"resume with +hf_token={MASK} seed=3",
        f"failed with {MASK}",
        "after: abc123xyz",
    ]
    assert f"ValueError: bad key {MASK}" in caplog.text and "bad key abc123xyz" not in caplog.text


def test_a_sweeps_record_is_rewritten_masked(tmp_path) -> None:
    """Each value of a swept secret (``a,b``) is masked, in overrides and everywhere else."""
    from ftlight.redact import redact_yaml_file

    record = {
        "api_key": "abc123xyz",
        "hydra": {"overrides": {"task": ["+api_key=abc123xyz", "+hf_token=hf_one1,hf_two2"]}},
        "note": "hf_two2 was the second",
        "seed": 1,
    }
    path = tmp_path / "multirun.yaml"
    OmegaConf.save(OmegaConf.create(record), path)
    assert redact_yaml_file(path)
    assert OmegaConf.to_container(OmegaConf.load(path)) == {
        "api_key": MASK,
        "hydra": {"overrides": {"task": [f"+api_key={MASK}", f"+hf_token={MASK}"]}},
        "note": f"{MASK} was the second",
        "seed": 1,
    }
    assert not redact_yaml_file(path)  # masked once: left alone


SWEPT = ["hf_swept_aaaa", "hf_swept_bbbb"]


def test_a_sweep_writes_no_secret(tmp_path) -> None:
    """``ftlight-train -m`` with a literal key and a swept token: no file of the sweep (its
    multirun.yaml, each trial's log and record) and not the console holds either."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FTLIGHT_TEST_KEY": "envsecret99"}
    args = [
        "-m",
        *setup_overrides("tiny-llama"),
        *BASE,
        "trainer.max_steps=1",
        "trainer.max_epochs=-1",
        "eval.before=false",
        "eval.after=false",
        "eval.export=false",
        "+api_key=sweepsecret123",
        f"+notes.hf_token={','.join(SWEPT)}",
        "+notes.access_token=${oc.env:FTLIGHT_TEST_KEY}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    cmd = [sys.executable, "-m", "ftlight", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "sweep"
    logs = sorted(sweep.glob("*/ftlight.log"))
    assert len(logs) == 2 and (sweep / "multirun.yaml").is_file()
    for path in [p for p in sweep.rglob("*") if p.is_file()]:
        for secret in ["sweepsecret123", *SWEPT, "envsecret99"]:
            assert secret.encode() not in path.read_bytes(), f"{secret} in {path}"
    for secret in ["sweepsecret123", *SWEPT, "envsecret99"]:
        assert secret not in proc.stdout + proc.stderr
    record = OmegaConf.to_container(OmegaConf.load(sweep / "multirun.yaml"), resolve=False)
    overrides = record["hydra"]["overrides"]["task"]
    assert f"+api_key={MASK}" in overrides and f"+notes.hf_token={MASK}" in overrides
    assert "+notes.access_token=${oc.env:FTLIGHT_TEST_KEY}" in overrides  # where, not what
    assert f"+api_key={MASK}" in proc.stdout  # the launcher's list of trials, masked


def test_the_resume_hint_names_the_secret_without_its_value(tmp_path) -> None:
    """A run stopped by SIGTERM logs how to resume: the secret's key with ``***``, and that
    it must be given again."""
    marker, run_dir = tmp_path / "paused", tmp_path / "run"
    args = [
        *setup_overrides("tiny-llama"),
        *BASE,
        "strategy=lora",
        "trainer.max_steps=6",
        "trainer.max_epochs=-1",
        "eval.after=false",
        "eval.export=false",
        "+hf_token=hf_resume_secret42",
        "+callbacks.pause._target_=ftlight.testing.PauseAtStep",
        "+callbacks.pause.step=2",
        f"+callbacks.pause.marker={marker}",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(tmp_path / "err", "w") as err:
        cmd = [sys.executable, "-m", "ftlight", *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
    deadline = time.monotonic() + 300
    while not Path(f"{marker}.0").exists():
        assert proc.poll() is None, (tmp_path / "err").read_text()[-3000:]
        assert time.monotonic() < deadline, "the run never reached step 2"
        time.sleep(0.1)
    os.kill(int(Path(f"{marker}.0").read_text()), signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    log_text = (run_dir / "ftlight.log").read_text()
    (line,) = [x for x in log_text.splitlines() if "Resume with: " in x]
    assert f" '+hf_token={MASK}' " in line and f" hydra.run.dir={run_dir} ckpt_path=" in line
    assert line.endswith(f"(give +hf_token again in place of {MASK}: secret values are not "
                         "written down)")  # fmt: skip
    for path in [p for p in tmp_path.rglob("*") if p.is_file()]:
        assert b"hf_resume_secret42" not in path.read_bytes(), path


def test_the_masking_callback_travels_to_a_trial_in_the_middle_of_a_sweep() -> None:
    """submitit pickles Hydra's callbacks with every trial it submits, while the sweep masks."""
    import pickle

    from omegaconf import OmegaConf

    from ftlight.redact import SecretMasking

    callback = SecretMasking()
    callback.on_multirun_start(OmegaConf.create({"hf_token": "hf_abcdefghijklmnop"}))
    try:
        copy = pickle.loads(pickle.dumps(callback))
    finally:
        callback.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": "/nonexistent"}}}))
    copy.on_job_end(OmegaConf.create({}))  # a fresh masking of its own, nothing to close
