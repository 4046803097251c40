"""No code from data: crafted cache entries, model folders and checkpoints never run.

Each attack plants a file whose loading would create a marker; the tests check that ftlight
refuses or ignores the file, the marker stays absent, and (where it applies) the run goes on.
Each also shows that the same file loaded the unsafe way does create the marker, so a test
that passes is not one that could not fail.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import logging
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ftlight.checkpoint import AtomicCheckpointIO
from ftlight.data import cache
from ftlight.errors import ConfigError, FtlightError

# a short fit: one step, nothing else
RUN = ["eval.before=false", "eval.after=false", "eval.export=false", "trainer.max_steps=1"]


class Payload:
    """Unpickling this creates the folder ``marker``: what a crafted file would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (os.mkdir, (self.marker,))


# -- the tokenised-data cache --------------------------------------------------------------
def test_a_planted_tokenised_cache_never_runs(helpers, tmp_path, monkeypatch, caplog) -> None:
    """A malicious pickle at the old ``.pkl`` path, and garbage (the same pickle) in the new
    entry's array or JSON file: neither runs, the entry is rebuilt, the run trains."""
    monkeypatch.setenv("FTLIGHT_CACHE", str(tmp_path / "cache"))
    quick = [*helpers.QUICK_FIT, *RUN]
    helpers.train(helpers.compose(quick, tmp_path / "clean", "causal_lm"))
    folder = tmp_path / "cache" / "tokenized"
    (arrays,) = folder.glob("*.npz")
    key = arrays.stem
    marker = tmp_path / "payload-ran"
    evil = pickle.dumps({"version": cache.ENCODING_VERSION, "encoded": Payload(marker)})
    old = folder / f"{key}.pkl"
    old.write_bytes(evil)
    for planted in (arrays, arrays.with_suffix(".json")):
        planted.write_bytes(evil)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ftlight"):
            result, _ = helpers.train(
                helpers.compose(quick, tmp_path / planted.suffix, "causal_lm")
            )
        assert not marker.exists()
        assert result.trainer.global_step == 1
        assert f"ignoring unreadable tokenised-data cache {folder / key}.json" in caplog.text
        assert cache.load(folder, key) is not None  # rebuilt whole
    assert old.read_bytes() == evil  # never opened, never rewritten
    pickle.loads(evil)
    assert marker.exists()  # what reading the old format would have done


def test_pickled_arrays_are_refused_even_with_a_matching_hash(tmp_path, caplog) -> None:
    """An attacker who can write the cache can also fix the recorded sha256: the arrays are
    still read with allow_pickle=False."""
    cache.save(tmp_path, "k", {"train": [{"input_ids": [1]}]}, {})
    marker = tmp_path / "payload-ran"
    objects = np.empty(1, dtype=object)
    objects[0] = Payload(marker)
    buffer = io.BytesIO()
    np.savez(buffer, **{"train/input_ids": objects, "train/input_ids.offsets": np.arange(2)})
    data = buffer.getvalue()
    (tmp_path / "k.npz").write_bytes(data)
    meta = json.loads((tmp_path / "k.json").read_text())
    meta["sha256"] = hashlib.sha256(data).hexdigest()
    (tmp_path / "k.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="ftlight"):
        assert cache.load(tmp_path, "k") is None
    assert "allow_pickle=False" in caplog.text
    assert not marker.exists()
    np.load(tmp_path / "k.npz", allow_pickle=True)["train/input_ids"]
    assert marker.exists()


# -- model folders with their own code -----------------------------------------------------
EVIL_MODULE = """
import pathlib
pathlib.Path({marker!r}).mkdir()
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizer


class EvilConfig(PretrainedConfig):
    model_type = "ftlight-evil"


class EvilModel(PreTrainedModel):
    config_class = EvilConfig


class EvilTokenizer(PreTrainedTokenizer):
    pass
"""


def _generate(run: Path, home: Path, *flags: str) -> subprocess.CompletedProcess:
    """``ftlight-generate`` answering "y" to any question on stdin."""
    env = {**os.environ, "HF_HOME": str(home), "HF_MODULES_CACHE": str(home / "modules")}
    cmd = [sys.executable, "-m", "ftlight.cli.generate", str(run), "hello", *flags]
    return subprocess.run(cmd, input="y\ny\n", env=env, capture_output=True, text=True, timeout=300)


def test_generate_never_runs_a_model_folders_code(tmp_path) -> None:
    """A run folder whose config.json maps the auto classes to its own .py file: refused
    with the fix, even with "y" piped to stdin; --trust-remote-code runs it."""
    model = tmp_path / "run" / "model"
    model.mkdir(parents=True)
    marker = tmp_path / "payload-ran"
    auto_map = {
        "AutoConfig": "evil.EvilConfig",
        "AutoModelForCausalLM": "evil.EvilModel",
        "AutoTokenizer": ["evil.EvilTokenizer", None],
    }
    config = {"model_type": "ftlight-evil", "auto_map": auto_map}
    (model / "config.json").write_text(json.dumps(config))
    (model / "tokenizer_config.json").write_text(json.dumps({"auto_map": auto_map}))
    (model / "evil.py").write_text(EVIL_MODULE.format(marker=str(marker)))

    refused = _generate(tmp_path / "run", tmp_path / "hf")
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "needs its own Python code" in refused.stderr
    assert "--trust-remote-code" in refused.stderr
    assert not marker.exists()

    trusted = _generate(tmp_path / "run", tmp_path / "hf", "--trust-remote-code")
    assert marker.exists(), trusted.stderr[-2000:]


def test_model_sources_never_ask_about_remote_code() -> None:
    """``trust_remote_code=None`` would make transformers ask on stdin: it is a bool."""
    from ftlight.models.sources import HFModel

    assert HFModel("some/model", trust_remote_code=None).trust_remote_code is False


# -- checkpoints ---------------------------------------------------------------------------
def _planted_checkpoint(path: Path, marker: Path) -> Path:
    """A Lightning-shaped checkpoint with one object whose unpickling creates ``marker``."""
    torch.save(
        {"state_dict": {}, "ftlight": {"strategy": "lora"}, "global_step": Payload(marker)}, path
    )
    return path


def test_a_planted_checkpoint_is_refused(tmp_path) -> None:
    marker = tmp_path / "payload-ran"
    ckpt = _planted_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(ConfigError, match="not a checkpoint ftlight can load safely"):
        AtomicCheckpointIO().load_checkpoint(ckpt, weights_only=False)  # asked for, not given
    assert not marker.exists()
    torch.load(ckpt, weights_only=False)
    assert marker.exists()


def test_resuming_from_a_planted_checkpoint_fails_cleanly(helpers, tmp_path) -> None:
    """Through ``train`` (ckpt_path=...) and through Lightning's own resume path."""
    from ftlight.train import train

    marker = tmp_path / "payload-ran"
    ckpt = _planted_checkpoint(tmp_path / "evil.ckpt", marker)
    overrides = ["strategy=lora", *helpers.QUICK_FIT, *RUN]
    cfg = helpers.compose([*overrides, f"ckpt_path={ckpt}"], tmp_path / "train", "causal_lm")
    with pytest.raises(FtlightError, match=str(ckpt)):
        train(cfg)
    assert not marker.exists()
    cfg = helpers.compose(overrides, tmp_path / "fit", "causal_lm")
    with pytest.raises(ConfigError, match="weights_only=True refused"):
        helpers.fit(cfg, ckpt_path=str(ckpt))
    assert not marker.exists()


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A local HTTP server for a folder: (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_remote_checkpoint_is_loaded_weights_only(http_folder, tmp_path, monkeypatch) -> None:
    """Lightning loads http(s) checkpoints with weights_only=False unless told otherwise."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder, url = http_folder
    marker = tmp_path / "payload-ran"
    _planted_checkpoint(folder / "evil.ckpt", marker)
    torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": 3}, folder / "good.ckpt")
    io_plugin = AtomicCheckpointIO()
    assert io_plugin.load_checkpoint(f"{url}/good.ckpt")["global_step"] == 3
    with pytest.raises(ConfigError, match="not a checkpoint ftlight can load safely"):
        io_plugin.load_checkpoint(f"{url}/evil.ckpt")
    assert not marker.exists()
