"""The command line: exit status 2 and a one-line reason for every bad input, never a traceback."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from charlm.chat_template import template_path
from charlm.checkpoint import load_model
from charlm.cli import main
from tests import reference
from tests.helpers import train_tiny


def run_cli(capsys, *args):
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture()
def train_args(corpus_file, tmp_path):
    return ["train", "--data", str(corpus_file), "--out", str(tmp_path / "out"), "--no-progress"]


@pytest.mark.parametrize(
    "content, problem",
    [(None, "does not exist"), (b"", "is empty"), (b"\xc3\x28 broken", "not valid UTF-8"),
     (b"too short", "too short")],
)
def test_train_refuses_bad_data_files(capsys, tmp_path, content, problem):
    data = tmp_path / "data.txt"
    if content is not None:
        data.write_bytes(content)
    status, _, err = run_cli(capsys, "train", "--data", str(data), "--out", str(tmp_path / "m"),
                             "--preset", "gpt-tiny", "--no-progress")
    assert status == 2 and problem in err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "extra, problem",
    [
        (["--preset", "gpt-enormous"], "unknown preset 'gpt-enormous'"),
        (["--preset", "lstm", "--arch", "gpt"], "is for architecture 'lstm'"),
        (["--preset", "gpt-tiny", "--set", "n_head=5"], "multiple of n_head"),
        (["--preset", "gpt-tiny", "--set", "dropout=2"], "dropout must be in [0, 1)"),
        (["--preset", "gpt-tiny", "--set", "seq_len=64"], "exceeds the model's block_size 32"),
        (["--preset", "gpt-tiny", "--set", "nonsense"], "--set expects key=value"),
        (["--arch", "lstm", "--resume", "--overwrite"], "contradict"),
    ],
)
def test_train_refuses_bad_settings(capsys, train_args, extra, problem):
    status, _, err = run_cli(capsys, *train_args, *extra)
    assert status == 2 and problem in err, err


def test_unknown_architecture_is_a_usage_error(capsys, train_args):
    with pytest.raises(SystemExit) as info:
        main([*train_args, "--arch", "transformer"])
    assert info.value.code == 2
    assert "invalid choice: 'transformer'" in capsys.readouterr().err


def test_generate_prints_the_prompt_then_a_seeded_continuation(capsys, trained_dir):
    args = ["generate", "--model", str(trained_dir), "--prompt", "the ", "--max-new-tokens", "40",
            "--seed", "5"]
    status, first, _ = run_cli(capsys, *args)
    _, second, _ = run_cli(capsys, *args)
    assert status == 0 and first == second
    assert first.startswith("the ") and len(first) == len("the ") + 40 + 1


def test_generate_refuses_a_prompt_with_unknown_characters(capsys, trained_dir):
    status, out, err = run_cli(capsys, "generate", "--model", str(trained_dir), "--prompt", "the €")
    assert status == 2 and out == ""
    assert "'€' (U+20AC) at 4" in err


def test_generate_refuses_a_missing_model(capsys, tmp_path):
    status, _, err = run_cli(capsys, "generate", "--model", str(tmp_path / "nothing"))
    assert status == 2 and "not a directory" in err


def test_eval_reports_loss_perplexity_and_bits_per_character(capsys, trained_dir, corpus_file):
    status, out, _ = run_cli(capsys, "eval", "--model", str(trained_dir), "--data", str(corpus_file))
    assert status == 0
    words = out.split()
    loss, perplexity, bpc = float(words[1]), float(words[3]), float(words[5])
    assert 0 < loss < math.log(len(load_model(trained_dir).vocab))  # better than uniform
    assert perplexity == pytest.approx(2.718281828**loss, rel=1e-3)
    assert bpc == pytest.approx(loss / 0.693147, rel=1e-3)
    summary = json.loads((trained_dir / "config.json").read_text())["training"]
    assert abs(loss - summary["val_loss"]) < 0.6  # the same model, scored on the whole file


def test_the_console_script_runs_without_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "charlm", "eval", "--model", str(tmp_path), "--data", "missing.txt"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    assert "missing file" in result.stderr and "Traceback" not in result.stderr


def test_eval_refuses_a_window_longer_than_the_context(capsys, tmp_path, corpus_file):
    out = train_tiny("gpt", corpus_file, tmp_path / "m", max_iters=2, eval_interval=2)
    args = ["eval", "--model", str(out), "--data", str(corpus_file), "--seq-len", "99"]
    status, _, err = run_cli(capsys, *args)
    assert status == 2 and "--seq-len must be between 1 and the model's context of 16" in err


def test_eval_refuses_text_the_vocabulary_cannot_encode(capsys, trained_dir, tmp_path):
    data = tmp_path / "other.txt"
    data.write_text("the king ₽ and 中", encoding="utf-8")
    status, _, err = run_cli(capsys, "eval", "--model", str(trained_dir), "--data", str(data))
    assert status == 2 and "'₽' (U+20BD) at 9" in err


def test_eval_reads_a_gpt_through_a_sliding_window(capsys, tiny_models, corpus_file):
    """The stride is the eval's own (the window's length: consecutive windows); charlm.scoring's
    tests pin down what each character sees."""
    model = str(tiny_models / "tiny-gpt")
    runs = {stride: run_cli(capsys, "eval", "--model", model, "--data", str(corpus_file), "--stride", stride,
                            "--no-progress") for stride in ("16", "8")}
    assert all(status == 0 for status, _, _ in runs.values())
    assert "windows of 16 every 8" in runs["8"][1] and "windows of 16 every 16" in runs["16"][1]
    assert runs["8"][1].split()[5] != runs["16"][1].split()[5]


@pytest.mark.parametrize("stride", ["17", "0"])
def test_eval_refuses_a_stride_outside_the_window(capsys, tiny_models, corpus_file, stride):
    args = ["eval", "--model", str(tiny_models / "tiny-gpt"), "--data", str(corpus_file), "--stride", stride]
    status, _, err = run_cli(capsys, *args)
    assert status == 2 and "--stride must be between 1 and the window's 16 characters" in err


def generated(capsys, model_dir, *flags: str, prompt: str = "the king", chars: int = 60) -> str:
    """The characters `charlm generate` printed after the prompt."""
    status, out, err = run_cli(capsys, "generate", "--model", str(model_dir), "--prompt", prompt,
                               "--max-new-tokens", str(chars), *flags)
    assert status == 0, err
    assert out.startswith(prompt) and out.endswith("\n") and len(out) == len(prompt) + chars + 1
    return out[len(prompt) : -1]


def sampling_judges():
    """flag -> (what the flags change, how to judge a draw by hand, the same flags without the control)."""
    return {
        "temperature-0": (["--temperature", "0"], lambda logits, prompt, drawn: reference.greedy_misses(logits, drawn),
                          ["--temperature", "0.8", "--seed", "3"]),
        "top-k": (["--temperature", "1", "--top-k", "2", "--seed", "3"],
                  lambda logits, prompt, drawn: reference.top_k_misses(logits, drawn, 2),
                  ["--temperature", "1", "--seed", "3"]),
        "top-p": (["--temperature", "1", "--top-p", "0.5", "--seed", "3"],
                  lambda logits, prompt, drawn: reference.top_p_misses(logits, drawn, 0.5),
                  ["--temperature", "1", "--seed", "3"]),
        "min-p": (["--temperature", "1", "--min-p", "0.3", "--seed", "3"],
                  lambda logits, prompt, drawn: reference.min_p_misses(logits, drawn, 0.3),
                  ["--temperature", "1", "--seed", "3"]),
        "repetition-penalty": (
            ["--temperature", "0", "--repetition-penalty", "2"],
            lambda logits, prompt, drawn: reference.greedy_misses(
                reference.repetition_adjusted(logits, prompt, drawn, 2.0), drawn),
            ["--temperature", "0"]),
    }


@pytest.mark.parametrize("case", sorted(sampling_judges()))
def test_generate_sampling_flags_shape_the_draw(capsys, tiny_models, case):
    """Each flag's draws are ones it allows (computed by hand from the model's distribution, see
    tests/reference.py); the same command without it draws some it would not have."""
    flags, judge, without = sampling_judges()[case]
    lstm = tiny_models / "tiny-lstm"  # recurrent: forward over the whole text is what decoding saw
    loaded = load_model(lstm)

    def misses(text: str) -> list[int]:
        encode = lambda t: loaded.vocab.encode(t).tolist()  # noqa: E731
        return judge(reference.next_char_logits(loaded, "the king", text), encode("the king"), encode(text))

    assert misses(generated(capsys, lstm, *flags)) == []
    assert misses(generated(capsys, lstm, *without)), "without the flag every draw was allowed anyway"


def test_generate_from_an_empty_prompt_starts_from_the_start_character(capsys, trained_dir):
    vocab = load_model(trained_dir).vocab
    start = vocab.chars[vocab.start_id]
    from_empty = generated(capsys, trained_dir, "--seed", "4", prompt="")
    assert from_empty == generated(capsys, trained_dir, "--seed", "4", prompt=start)


def test_generate_runs_on_the_device_asked_for(capsys, tiny_models):
    assert generated(capsys, tiny_models / "tiny-gpt", "--device", "cpu", "--seed", "1")
    if not torch.cuda.is_available():
        status, out, err = run_cli(capsys, "generate", "--model", str(tiny_models / "tiny-gpt"), "--device", "cuda")
        assert status == 2 and out == "" and "CUDA is not available" in err


def test_eval_scores_in_windows_of_the_seq_len_asked_for(capsys, trained_dir, corpus_file):
    status, out, err = run_cli(capsys, "eval", "--model", str(trained_dir), "--data", str(corpus_file),
                               "--seq-len", "8")
    assert status == 0, err
    # A GPT reads through a sliding window of --seq-len (every half a window by default); a recurrent
    # model reads the whole text, its state carried.
    recurrent = load_model(trained_dir).model.carries_state
    assert ("the whole text" if recurrent else "windows of 8 every") in out
    loss = float(out.split()[1])
    assert 0 < loss < math.log(len(load_model(trained_dir).vocab))


def test_train_gives_the_model_a_bundled_chat_template_and_its_stop(capsys, train_args):
    status, _, err = run_cli(capsys, *train_args, "--preset", "gpt-tiny", "--set", "max_iters=2",
                             "--set", "eval_interval=1", "--set", "eval_iters=1", "--chat-template", "play")
    assert status == 0, err
    out = Path(train_args[4])
    assert (out / "chat_template.jinja").read_text(encoding="utf-8") == template_path("play").read_text("utf-8")
    assert json.loads((out / "generation_config.json").read_text(encoding="utf-8")) == {"stop_strings": ["\n\n"]}


def test_train_refuses_a_chat_template_it_cannot_use_before_training(capsys, train_args, tmp_path):
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}", encoding="utf-8")
    for template, problem in ((str(broken), "not a valid Jinja template"), ("no-such-template", "cannot read")):
        status, _, err = run_cli(capsys, *train_args, "--preset", "gpt-tiny", "--chat-template", template)
        assert status == 2 and problem in err and "play, verse" in err, err
        assert not Path(train_args[4]).exists()
