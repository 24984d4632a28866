"""The bundled model directories (models/), as docs/models.md's table describes them: each one loads, is
served, and generates; each scores near its recorded validation loss on its own held-out text.
These run everywhere (CPU, short generations): they are the only tests of the shipped weights
that need no browser."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

from charlm import cpu_onnx, cpu_step
from charlm.chat_template import template_files
from charlm.checkpoint import load_model
from charlm.generation import generate
from charlm.sampling import SamplingParams
from tests.helpers import missing_tool
from tests.service.helpers import running_app, settings_for

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "models"
DATA = REPO.parent / "shared" / "data"  # ../shared beside the clone, as CI has it
CHARS = 24


def documented_table() -> dict[str, dict[str, object]]:
    """docs/models.md's table ("Bundled models"): name -> architecture, parameters, validation loss."""
    section = (REPO / "docs" / "models.md").read_text().split("# Bundled models", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for match in re.finditer(r"^\| `models/([\w-]+)`[^|]*\| (\w+),[^|]*\|[^|]*\| ([\d,]+) \| ([\d.]+) \|", section,
                             flags=re.MULTILINE):
        name, architecture, parameters, val_loss = match.groups()
        rows[name] = {"architecture": architecture, "parameters": int(parameters.replace(",", "")),
                      "val_loss": float(val_loss)}
    return rows


TABLE = documented_table()


def test_docs_list_every_bundled_model_directory():
    on_disk = sorted(p.name for p in BUNDLED.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert sorted(TABLE) == on_disk and len(on_disk) == 5


@pytest.mark.anyio
async def test_every_bundled_model_is_served_and_generates():
    """Served the way `charlm serve` serves models/ (float32 on a CPU, bf16 weights included): each
    answers a seeded request with characters of its own vocabulary, exactly those `charlm generate`
    draws for the seed (alone, both step one row the same way), names itself in the response, and
    reports the documented architecture and parameter count."""
    settings = settings_for(BUNDLED, default_model="shakespeare-gpt", max_batch_size=2)
    async with running_app(settings) as (client, _):
        listed = {card["id"]: card for card in (await client.get("/v1/models")).json()["data"]}
        assert sorted(listed) == sorted(TABLE)
        for name, row in TABLE.items():
            assert (listed[name]["architecture"], listed[name]["parameters"]) == (row["architecture"],
                                                                                 row["parameters"])
            loaded = load_model(BUNDLED / name)
            vocab = loaded.vocab
            prompt = "Я помню" if name.startswith("pushkin") else "ROMEO:"
            body = {"inputs": prompt, "model": name, "parameters": {"max_new_tokens": CHARS, "seed": 1,
                                                                  "do_sample": True, "details": True}}
            response = await client.post("/generate", json=body)
            assert response.status_code == 200, response.text
            assert response.headers["x-charlm-model"] == name
            answer = response.json()
            text = answer["generated_text"]
            assert len(text) == CHARS and set(text) <= set(vocab.chars), text
            assert [token["id"] for token in answer["details"]["tokens"]] == vocab.encode(text).tolist()
            reference = generate(loaded.model, vocab, prompt, CHARS, SamplingParams(temperature=1.0, seed=1),
                                 loaded.path)  # as `charlm generate --model` does
            assert text == "".join(c.char for c in reference)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_a_bundled_model_that_steps_in_onnx_runtime_carries_its_current_step(name):
    """So that a first `make serve` exports nothing. New weights, or a change to charlm/models/, need
    a new export: python -m charlm.cpu_onnx models/NAME."""
    loaded = load_model(BUNDLED / name)
    carried = sorted(p.name for p in (BUNDLED / name).glob(f"{cpu_onnx.SHIPPED_PREFIX}*"))
    if loaded.model.architecture not in cpu_step.AUTO_ONNX:
        assert carried == []
        return
    expected = cpu_onnx.shipped_path(BUNDLED / name, loaded.model).name
    assert carried == [expected], f"stale: run python -m charlm.cpu_onnx models/{name}"


@pytest.mark.parametrize("name", sorted(TABLE))
def test_every_bundled_model_scores_near_its_validation_loss_on_held_out_text(name):
    """24 windows of the training sequence length, spread evenly over the validation split (the
    last 10%) of the model's own training text, found beside the clone and checked against the
    sha256 its config records: a damaged, swapped or untrained model scores far worse than the documented
    figure (uniform guessing: about 4.2 nats). So few windows put the estimate within about 0.1
    of the figure, measured over thousands of random windows."""
    loaded = load_model(BUNDLED / name)
    training = json.loads((BUNDLED / name / "config.json").read_text())["training"]
    data = DATA / training["data"]
    if not data.is_file():
        missing_tool(f"{data} is missing (CI has ../shared beside the clone)")
    raw = data.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == training["data_sha256"], f"{data} is not the text it was trained on"
    text = raw.decode("utf-8").removeprefix("\ufeff")
    held_out = torch.from_numpy(loaded.vocab.encode(text[int(len(text) * (1 - training["val_fraction"])) :])).long()
    length = training["seq_len"]
    starts = torch.linspace(0, len(held_out) - length - 2, 24).long().tolist()
    inputs = torch.stack([held_out[s : s + length] for s in starts])  # (24, T)
    targets = torch.stack([held_out[s + 1 : s + length + 1] for s in starts])  # (24, T)
    with torch.inference_mode():
        _, loss = loaded.model(inputs, targets)
    assert loss is not None and loss.item() < TABLE[name]["val_loss"] + 0.3, (loss, TABLE[name]["val_loss"])


@pytest.mark.parametrize("name", sorted(TABLE))
def test_every_bundled_model_ships_its_chat_template_as_charlm_bundles_it(name):
    """Shakespeare's models speak in a play, Pushkin's in verse: the files are the bundled
    templates' own (charlm train --chat-template writes the same)."""
    expected = template_files("verse" if name.startswith("pushkin") else "play")
    assert {file: (BUNDLED / name / file).read_text(encoding="utf-8") for file in expected} == expected


@pytest.mark.anyio
async def test_a_bundled_shakespeare_model_answers_a_chat_in_character():
    """ROMEO speaks, JULIET answers in one speech: it ends at its blank line, never holds another
    speaker's header, and is the completion of the rendered play."""
    settings = settings_for(BUNDLED, default_model="shakespeare-gpt", max_batch_size=4)
    messages = [{"role": "user", "content": "O Juliet, what light through yonder window breaks?"}]
    async with running_app(settings) as (client, _):
        body = {"messages": messages, "max_completion_tokens": 600, "seed": 7, "temperature": 0.8, "n": 4}
        answer = (await client.post("/v1/chat/completions", json=body)).json()
        prompt = (await client.post("/tokenize", json={"messages": messages})).json()["prompt"]
    assert prompt == f"ROMEO:\n{messages[0]['content']}\n\nJULIET:\n"
    for choice in answer["choices"]:
        reply = choice["message"]["content"]
        assert reply and "\n\n" not in reply, choice
        assert choice["finish_reason"] == "stop" or len(reply) == 600, choice  # a long speech may run on
        assert not re.search(r"^[A-Z][A-Z ]+:$", reply, re.MULTILINE), reply  # no other speaker's header
