"""Broken model directories at startup: `charlm serve` serves the good models and names each bad
file; with no good model it exits non-zero with those messages."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from charlm.vocab import Vocab
from tests.service.helpers import serve_process

# Root reads any file whatever its mode; without these capabilities it obeys permissions too.
DROP_FILE_OVERRIDE = ("setpriv", "--inh-caps=-dac_override,-dac_read_search",
                      "--bounding-set=-dac_override,-dac_read_search")


def truncate_weights(model: Path) -> None:
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


def foreign_vocab(model: Path) -> None:
    Vocab.from_text("a vocabulary from some other text").save(model / "vocab.json")


def unknown_architecture(model: Path) -> None:
    weights = model / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        metadata = {**(f.metadata() or {}), "architecture": "mamba"}
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
    save_file(tensors, str(weights), metadata)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "architecture": "mamba"}))


def missing_file(model: Path) -> None:
    (model / "config.json").unlink()


def unreadable(model: Path) -> None:
    model.chmod(0)


# directory name -> (how it is broken, what the error names)
FAULTS = {
    "truncated": (truncate_weights, "truncated/model.safetensors: truncated or corrupt"),
    "foreign-vocab": (foreign_vocab, "foreign-vocab/vocab.json: vocabulary fingerprint"),
    "unknown-arch": (unknown_architecture, "unknown-arch/model.safetensors: unknown architecture 'mamba'"),
    "missing-file": (missing_file, "missing-file/config.json: missing file"),
    "unreadable": (unreadable, "unreadable/model.safetensors: Permission denied"),
}


@pytest.fixture()
def broken_models(tiny_models: Path, tmp_path: Path) -> Iterator[Path]:
    models = tmp_path / "models"
    for name, (break_it, _) in FAULTS.items():
        shutil.copytree(tiny_models / "tiny-gpt", models / name)
        break_it(models / name)
    yield models
    (models / "unreadable").chmod(0o755)  # so that the temporary directory can be removed


def server_prefix() -> tuple[str, ...]:
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: an unreadable directory cannot be made")
    return DROP_FILE_OVERRIDE


def test_the_good_models_are_served_and_each_bad_one_reported(broken_models, tiny_models):
    shutil.copytree(tiny_models / "tiny-lstm", broken_models / "good")
    args = ("--models-dir", str(broken_models), "--default-model", "good")
    with serve_process(*args, prefix=server_prefix()) as server:
        server.wait_healthy()
        models = httpx.get(f"{server.url}/health").json()["models"]
        assert models["good"]["status"] == "ready"
        for name, (_, message) in FAULTS.items():
            assert models[name]["status"] == "failed"
            assert message in models[name]["error"], models[name]["error"]
        answer = httpx.post(f"{server.url}/generate", json={"inputs": "the", "parameters": {"max_new_tokens": 4}})
        assert answer.status_code == 200 and len(answer.json()["generated_text"]) == 4


def test_without_a_good_model_the_server_exits_naming_every_bad_file(broken_models):
    with serve_process("--models-dir", str(broken_models), prefix=server_prefix()) as server:
        assert server.process.wait(120) == 2
        output = server.output()
    assert "no model could be loaded" in output
    for _, message in FAULTS.values():
        assert message in output
    assert "Traceback" not in output


def test_a_batch_whose_decode_state_does_not_fit_fails_that_model_at_startup(tiny_models, tmp_path):
    """A model whose window is so long that 4,096 rows of its cache need over a terabyte: it is
    reported failed, naming what it needs and the setting to lower; the others serve."""
    from charlm.checkpoint import load_model, save_model
    from charlm.models import build_model

    models = tmp_path / "models"
    shutil.copytree(tiny_models / "tiny-gpt", models / "small")
    vocab = load_model(tiny_models / "tiny-gpt").vocab
    huge = build_model("gpt", {"vocab_size": len(vocab), "block_size": 65536, "n_layer": 64, "n_head": 1,
                               "n_embd": 8})
    save_model(models / "long-window", huge, vocab)
    with serve_process("--models-dir", str(models), "--max-batch-size", "4096") as server:
        server.wait_healthy()
        health = httpx.get(f"{server.url}/health").json()["models"]
    assert health["small"]["status"] == "ready"
    error = health["long-window"]["error"]
    assert health["long-window"]["status"] == "failed" and "CHARLM_MAX_BATCH_SIZE" in error
    assert re.search(r"4096 rows of decode state need 10\d\d\.\d\d GiB on cpu, but only [\d.]+ GiB is free", error)
