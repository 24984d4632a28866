"""Shared fixtures: a small corpus written on the fly and tiny real models trained on it."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from charlm.checkpoint import LoadedModel, load_model
from tests.helpers import TINY, make_corpus, make_json_corpus, make_play_corpus, train_tiny

pytest_plugins = ["tests.quiet_exit"]  # ends with pytest's summary, not Triton's leak report

PLAY_TEMPLATE = Path(__file__).parent.parent / "charlm" / "chat_templates" / "play.jinja"

torch.set_num_threads(1)  # the suite is many tiny models; extra threads only contend
if not torch.cuda.is_available():  # Triton kernels run interpreted; it must be set before Triton's import
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The CPU steps exported or compiled for the tests' models go to the run's own cache (inherited by the
# servers it starts), never to the user's.
if not os.environ.get("CHARLM_CPU_CACHE"):
    os.environ["CHARLM_CPU_CACHE"] = tempfile.mkdtemp(prefix="charlm-cpu-step-")
    atexit.register(shutil.rmtree, os.environ["CHARLM_CPU_CACHE"], ignore_errors=True)

@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(make_corpus(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_models(corpus_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory holding a tiny trained model of each architecture: tiny-gpt, tiny-lstm, ..."""
    models = tmp_path_factory.mktemp("models")
    for architecture in sorted(TINY):
        train_tiny(architecture, corpus_file, models / f"tiny-{architecture}")
    return models


@pytest.fixture(scope="session")
def json_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory holding tiny-json: a tiny GPT trained on JSON records (its vocabulary has
    braces, quotes and digits, which the other tiny models lack)."""
    data = tmp_path_factory.mktemp("json-data") / "records.txt"
    data.write_text(make_json_corpus(), encoding="utf-8")
    models = tmp_path_factory.mktemp("json-models")
    train_tiny("gpt", data, models / "tiny-json", max_iters=150)
    return models


@pytest.fixture(scope="session")
def play_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory holding tiny-play: a tiny GPT trained on a play (speeches of `NAME:` and
    lines), shipped as the bundled Shakespeare models are, with charlm's play chat template and a
    speech's end as the reply's default stop."""
    data = tmp_path_factory.mktemp("play-data") / "play.txt"
    data.write_text(make_play_corpus(), encoding="utf-8")
    models = tmp_path_factory.mktemp("play-models")
    model = train_tiny("gpt", data, models / "tiny-play", max_iters=150)
    shutil.copy(PLAY_TEMPLATE, model / "chat_template.jinja")
    (model / "generation_config.json").write_text('{"stop_strings": ["\\n\\n"]}\n', encoding="utf-8")
    return models


@pytest.fixture(scope="session", params=sorted(TINY))
def trained_dir(request: pytest.FixtureRequest, tiny_models: Path) -> Path:
    """The model directory of each architecture in turn."""
    return tiny_models / f"tiny-{request.param}"


@pytest.fixture()
def trained(trained_dir: Path) -> LoadedModel:
    return load_model(trained_dir)
