"""The CPU step's backends (charlm.cpu_step): the compiled and the exported steps draw what the step
as written draws, their log-probabilities are those of `forward`, and a compile or an export that
fails leaves the step eager."""

import logging
import shutil

import pytest
import torch

from charlm import cpu_onnx, cpu_step
from charlm.checkpoint import load_model
from charlm.decoding import SlotDecoder
from charlm.generation import generate
from charlm.models import ARCHITECTURES, build_model
from charlm.sampling import SamplingParams
from charlm.vocab import Vocab
from tests.charlm.test_decoding import WHOLE_HISTORY, decode_with

PROMPT = [3, 1, 4, 1, 5, 9, 2, 6]
PLAIN = SamplingParams(temperature=1.0)


def tiny(architecture: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(architecture, {"vocab_size": 11, **WHOLE_HISTORY.get(architecture, {})}).eval()


def decoded(model, backend: str, monkeypatch, chars: int = 20, slots: int = 3,
            params: SamplingParams = PLAIN, seed: int = 7):
    """A lone seeded sequence's ids and log-probabilities, decoded with `backend`."""
    monkeypatch.setenv("CHARLM_CPU_BACKEND", backend)
    decoder = SlotDecoder(model, slots)
    decoder.warm_up(PROMPT)
    ids, logprobs = decode_with(decoder, PROMPT, params, seed, chars)
    return decoder, ids, logprobs


def test_the_backend_setting_is_checked_and_auto_says_why(monkeypatch):
    model = tiny("gpt")
    monkeypatch.setenv("CHARLM_CPU_BACKEND", "Inductor")
    assert cpu_step.choose(model) == ("inductor", "CHARLM_CPU_BACKEND is 'inductor'")
    backend, why = cpu_step.choose(model, "auto")
    assert backend == "eager" and "startup" in why
    monkeypatch.setenv("CHARLM_CPU_BACKEND", "tensorrt")
    with pytest.raises(ValueError, match="CHARLM_CPU_BACKEND"):
        cpu_step.requested()


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
@torch.inference_mode()
def test_every_family_s_plain_step_traces_whole_and_draws_as_eager(architecture, monkeypatch):
    """Traced by dynamo as one graph (fullgraph) and run through AOT autograd's functionalisation
    (`aot_eager`: seconds, where inductor's C++ takes tens of them); the draws of a lone seeded
    request are those of the step as written, and its log-probabilities are `forward`'s."""
    monkeypatch.setattr(cpu_step, "COMPILER", "aot_eager")
    model = tiny(architecture)
    _, eager_ids, eager_logprobs = decoded(model, "eager", monkeypatch)
    decoder, ids, logprobs = decoded(model, "inductor", monkeypatch)
    assert decoder.report["cpu_backend"] == "inductor" and decoder.cpu_step is not None
    assert ids == eager_ids
    torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(eager_logprobs), rtol=1e-4, atol=1e-5)
    expected = model(torch.tensor([PROMPT + ids]))[0][0, len(PROMPT) - 1 : -1].log_softmax(-1)  # (20, V)
    torch.testing.assert_close(torch.tensor(logprobs), expected[torch.arange(20), torch.tensor(ids)],
                               rtol=1e-4, atol=1e-5)


@torch.inference_mode()
def test_the_inductor_step_of_a_gpt_draws_as_eager_and_as_forward(monkeypatch, tmp_path):
    """The real C++ compile (about 20 s here), past the window: re-encoding feeds the compiled step."""
    monkeypatch.setenv("CHARLM_CPU_CACHE", str(tmp_path))
    model = build_model("gpt", {"vocab_size": 11, "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16}).eval()
    _, eager_ids, eager_logprobs = decoded(model, "eager", monkeypatch, chars=40)
    decoder, ids, logprobs = decoded(model, "inductor", monkeypatch, chars=40)
    assert decoder.report["cpu_backend"] == "inductor" and decoder.report["cpu_compile_s"] > 0
    assert ids == eager_ids
    torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(eager_logprobs), rtol=1e-4, atol=1e-5)


@torch.inference_mode()
def test_a_cpu_step_that_fails_to_compile_decodes_eagerly(monkeypatch, caplog):
    """Fault injection: torch.compile raises. The decoder says why in its report and the log."""
    def failing_compile(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", failing_compile)
    model = tiny("mingru")
    with caplog.at_level(logging.WARNING):
        decoder, ids, _ = decoded(model, "inductor", monkeypatch)
    assert decoder.cpu_step is None and decoder.report["cpu_backend"] == "eager"
    assert "no compiler here" in str(decoder.report["cpu_backend_reason"])
    assert "compiling the CPU step failed" in caplog.text and len(ids) == 20


def test_auto_runs_the_recurrent_families_that_gain_in_onnx_runtime():
    chosen = {architecture: cpu_step.choose(tiny(architecture), "auto") for architecture in sorted(ARCHITECTURES)}
    assert {architecture: backend for architecture, (backend, _) in chosen.items()} == \
        {"gpt": "eager", "lstm": "eager", "lstm_attention": "onnx", "mingru": "onnx"}
    assert "measured faster in ONNX Runtime" in chosen["mingru"][1]


@pytest.mark.parametrize("architecture", sorted(cpu_onnx.ARCHITECTURES))
@pytest.mark.parametrize("params", [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=4)],
                         ids=["plain", "top-k"])
@torch.inference_mode()
def test_the_onnx_step_draws_as_eager_and_as_forward(architecture, params, monkeypatch, tmp_path):
    """The real export and ONNX Runtime; the window of lstm_attention overflows (it is 6)."""
    monkeypatch.setenv("CHARLM_CPU_CACHE", str(tmp_path))
    model = tiny(architecture)
    _, eager_ids, eager_logprobs = decoded(model, "eager", monkeypatch, params=params)
    decoder, ids, logprobs = decoded(model, "onnx", monkeypatch, params=params)
    assert decoder.report["cpu_backend"] == "onnx" and decoder.cpu_step is not None
    assert ids == eager_ids
    torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(eager_logprobs), rtol=1e-4, atol=1e-5)
    expected = model(torch.tensor([PROMPT + ids]))[0][0, len(PROMPT) - 1 : -1].log_softmax(-1)  # (20, V)
    torch.testing.assert_close(torch.tensor(logprobs), expected[torch.arange(20), torch.tensor(ids)],
                               rtol=1e-4, atol=1e-5)


@torch.inference_mode()
def test_the_exported_step_is_cached_per_weights(tmp_path):
    model = tiny("mingru")
    first = cpu_onnx.load(model, tmp_path, "tiny")
    again = cpu_onnx.load(model, tmp_path, "tiny")
    assert (first.source, again.source) == ("exported", "cache")
    with torch.no_grad():
        model.lm_head.weight.add_(0.01)  # new weights: a new file, never the stale one
    assert cpu_onnx.load(model, tmp_path, "tiny").source == "exported"
    assert len(list(tmp_path.glob("mingru-*.onnx"))) == 2 and not list(tmp_path.glob(".*partial"))


@torch.inference_mode()
def test_a_gpt_or_a_failed_export_decodes_eagerly_and_says_why(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CHARLM_CPU_CACHE", str(tmp_path))
    decoder, _, _ = decoded(tiny("gpt"), "onnx", monkeypatch)
    assert decoder.cpu_step is None and "recurrent families only" in str(decoder.report["cpu_backend_reason"])

    def failing_export(*args, **kwargs):
        raise RuntimeError("no exporter here")

    monkeypatch.setattr(torch.onnx, "export", failing_export)
    with caplog.at_level(logging.WARNING):
        decoder, ids, _ = decoded(tiny("mingru"), "auto", monkeypatch)
    assert decoder.cpu_step is None and decoder.report["cpu_backend"] == "eager" and len(ids) == 20
    assert "no exporter here" in str(decoder.report["cpu_backend_reason"])
    assert "ONNX Runtime failed" in caplog.text and not list(tmp_path.rglob("*.onnx"))


@torch.inference_mode()
def test_charlm_generate_steps_as_the_service_s_lone_request(monkeypatch, tmp_path):
    """The command line prepares the same CPU step: a seeded text is the same from both."""
    monkeypatch.setenv("CHARLM_CPU_CACHE", str(tmp_path))
    model = tiny("mingru")
    vocab = Vocab(list("abcdefghijk"))
    params = SamplingParams(temperature=1.0, seed=7)
    _, ids, _ = decoded(model, "auto", monkeypatch, seed=7)
    text = "".join(each.char for each in generate(model, vocab, vocab.decode(PROMPT), 20, params))
    assert text == vocab.decode(ids)


@torch.inference_mode()
def test_a_step_carried_in_the_model_directory_is_used_and_replaced_with_its_weights(tiny_models, tmp_path):
    directory = tmp_path / "tiny-mingru"
    shutil.copytree(tiny_models / "tiny-mingru", directory)
    (directory / f"{cpu_onnx.SHIPPED_PREFIX}0123.onnx").write_bytes(b"a step of other weights")
    carried = cpu_onnx.export_beside(directory)
    assert [p.name for p in directory.glob(f"{cpu_onnx.SHIPPED_PREFIX}*")] == [carried.name]
    model = load_model(directory).model
    loaded = cpu_onnx.load(model, tmp_path / "cache", "tiny", directory)
    assert loaded.source == "model directory" and not (tmp_path / "cache").exists()
    assert cpu_onnx.load(model, tmp_path / "cache", "tiny").source == "exported"  # no directory given
