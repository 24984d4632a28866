"""save -> load gives the same model; every kind of damage gives a clear ModelDirError."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from charlm.checkpoint import ModelDirError, load_model, save_model
from charlm.models import ARCHITECTURES, build_model
from charlm.vocab import Vocab

TEXT = "to be or not to be\nбыть или не быть"


def small_model(architecture="gpt"):
    vocab = Vocab.from_text(TEXT)
    configs = {
        "gpt": {"block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16},
        "lstm": {"hidden_size": 16},
        "lstm_attention": {"hidden_size": 16, "n_embd": 8, "n_head": 2, "block_size": 4},
        "mingru": {"n_embd": 16, "hidden_size": 8, "n_layer": 2},
    }
    torch.manual_seed(0)
    return build_model(architecture, {"vocab_size": len(vocab), **configs[architecture]}).eval(), vocab


@pytest.fixture()
def saved(tmp_path):
    model, vocab = small_model()
    save_model(tmp_path / "m", model, vocab, {"note": "test"})
    return tmp_path / "m", model, vocab


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_save_then_load_gives_identical_logits(tmp_path, architecture):
    model, vocab = small_model(architecture)
    save_model(tmp_path / "m", model, vocab)
    loaded = load_model(tmp_path / "m")
    idx = torch.tensor(vocab.encode(TEXT[:12]))[None]
    assert torch.equal(loaded.model(idx)[0], model(idx)[0])
    assert loaded.vocab.chars == vocab.chars and loaded.name == "m"


def test_tied_weights_are_stored_once_and_stay_tied(saved):
    path, _, _ = saved
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
    assert "wte.weight" in names and "lm_head.weight" not in names
    model = load_model(path).model
    assert model.lm_head.weight is model.wte.weight


def test_metadata_carries_format_architecture_config_and_fingerprint(saved):
    path, model, vocab = saved
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["format_version"] == "1" and metadata["architecture"] == "gpt"
    assert json.loads(metadata["config"])["n_embd"] == model.config.n_embd
    assert metadata["vocab_fingerprint"] == vocab.fingerprint
    info = json.loads((path / "config.json").read_text())
    assert info["training"] == {"note": "test"} and info["parameters"] == model.num_parameters()


def test_loading_casts_to_the_requested_dtype(saved):
    model = load_model(saved[0], dtype=torch.bfloat16).model
    assert next(model.parameters()).dtype == torch.bfloat16


def rewrite_weights(path, tensors=None, **metadata_changes):
    file = path / "model.safetensors"
    with safe_open(str(file), framework="pt") as f:
        metadata = {**f.metadata(), **metadata_changes}
        stored = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file(tensors if tensors is not None else stored, file, metadata)
    return stored


@pytest.mark.parametrize("missing", ["model.safetensors", "vocab.json", "config.json"])
def test_missing_file_is_named(saved, missing):
    (saved[0] / missing).unlink()
    with pytest.raises(ModelDirError, match=f"{missing}: missing file"):
        load_model(saved[0])


def test_not_a_directory(tmp_path):
    with pytest.raises(ModelDirError, match="not a directory"):
        load_model(tmp_path / "nowhere")


def test_truncated_weights(saved):
    file = saved[0] / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelDirError, match="model.safetensors: truncated or corrupt"):
        load_model(saved[0])


def test_garbage_weights(saved):
    (saved[0] / "model.safetensors").write_bytes(b"\x00\x01 not safetensors at all")
    with pytest.raises(ModelDirError, match="model.safetensors: truncated or corrupt"):
        load_model(saved[0])


def test_unknown_architecture(saved):
    rewrite_weights(saved[0], architecture="mamba")
    with pytest.raises(ModelDirError, match="model.safetensors: unknown architecture 'mamba'"):
        load_model(saved[0])


def test_unsupported_format_version(saved):
    rewrite_weights(saved[0], format_version="99")
    with pytest.raises(ModelDirError, match="format version '99' is not supported"):
        load_model(saved[0])


def test_config_that_does_not_fit_the_weights(saved):
    path, model, _ = saved
    config = json.loads(json.dumps({**model.config.__dict__, "n_embd": 32}))
    rewrite_weights(path, config=json.dumps(config))
    info = json.loads((path / "config.json").read_text())
    info["config"] = config
    (path / "config.json").write_text(json.dumps(info))
    with pytest.raises(ModelDirError, match=r"weights do not fit the config: .*shape"):
        load_model(path)


def test_config_json_that_disagrees_with_the_weights(saved):
    path = saved[0]
    info = json.loads((path / "config.json").read_text())
    info["config"]["n_layer"] = 5
    (path / "config.json").write_text(json.dumps(info))
    with pytest.raises(ModelDirError, match="config.json: architecture or config disagrees"):
        load_model(path)


def test_missing_tensor(saved):
    stored = rewrite_weights(saved[0])
    del stored["ln_f.weight"]
    rewrite_weights(saved[0], tensors=stored)
    with pytest.raises(ModelDirError, match="missing tensor 'ln_f.weight'"):
        load_model(saved[0])


def test_unexpected_tensor(saved):
    stored = rewrite_weights(saved[0])
    stored["extra.weight"] = torch.zeros(2)
    rewrite_weights(saved[0], tensors=stored)
    with pytest.raises(ModelDirError, match="unexpected tensor 'extra.weight'"):
        load_model(saved[0])


def test_vocab_from_another_model_is_caught_by_its_fingerprint(saved, tmp_path):
    other_model, _ = small_model()
    other_vocab = Vocab(list(reversed(Vocab.from_text(TEXT).chars)))  # same size, other order
    save_model(tmp_path / "other", other_model, other_vocab)
    shutil.copy(tmp_path / "other" / "vocab.json", saved[0] / "vocab.json")
    with pytest.raises(ModelDirError, match="vocab.json: vocabulary fingerprint .* does not match"):
        load_model(saved[0])


def test_corrupt_json(saved):
    (saved[0] / "vocab.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="vocab.json: unreadable JSON"):
        load_model(saved[0])
