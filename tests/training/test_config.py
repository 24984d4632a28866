import itertools

import pytest

from charlm.models import ARCHITECTURES
from training.config import PRESETS, ConfigError, TrainConfig, parse_assignment, resolve
from training.optim import learning_rate


def test_presets_follow_their_recipes():
    tiny = PRESETS["gpt-tiny"]
    assert tiny.model == {"n_layer": 4, "n_head": 4, "n_embd": 64, "block_size": 32, "dropout": 0.0}
    assert tiny.train["batch_size"] == 16 and tiny.train["lr"] == 1e-3
    small = PRESETS["gpt-small"]
    assert (small.model["n_layer"], small.model["n_embd"], small.model["block_size"]) == (4, 128, 64)
    assert small.train["batch_size"] == 12
    baby = PRESETS["gpt-baby"]
    assert (baby.model["n_layer"], baby.model["n_head"], baby.model["n_embd"]) == (6, 6, 384)
    assert baby.model["block_size"] == 256 and baby.model["dropout"] == 0.2
    assert baby.train["warmup_iters"] == 100 and baby.train["max_iters"] == 5000
    lstm = PRESETS["lstm"]
    assert (lstm.model["n_layer"], lstm.model["hidden_size"], lstm.model["dropout"]) == (2, 256, 0.5)
    assert lstm.train["seq_len"] == 100 and lstm.train["batching"] == "streams"
    assert PRESETS["lstm-attention"].architecture == "lstm_attention"


def test_every_preset_resolves_to_valid_configs():
    for name, preset in PRESETS.items():
        architecture, model, train = resolve(None, name, {}, vocab_size=65)
        assert architecture == preset.architecture and model.vocab_size == 65
        assert isinstance(train, TrainConfig)


def test_architecture_alone_picks_its_default_preset():
    assert resolve("lstm", None, {}, 10)[0] == "lstm"


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_every_architecture_has_a_default_preset(architecture):
    assert resolve(architecture, None, {}, 10)[0] == architecture


def test_overrides_reach_the_model_or_the_training_config():
    _, model, train = resolve(None, "gpt-tiny", {"n_layer": 2, "max_iters": 7, "lr": 3e-4}, 10)
    assert model.n_layer == 2 and train.max_iters == 7 and train.lr == 3e-4


def test_parse_assignment_reads_json_values_and_falls_back_to_strings():
    assert parse_assignment("lr=3e-4") == ("lr", 3e-4)
    assert parse_assignment("compile=true") == ("compile", True)
    assert parse_assignment("batching=streams") == ("batching", "streams")
    with pytest.raises(ConfigError, match="key=value"):
        parse_assignment("max_iters")


@pytest.mark.parametrize(
    "arch, preset, overrides, problem",
    [
        (None, "gpt-huge", {}, "unknown preset 'gpt-huge'"),
        ("rnn", None, {}, "unknown architecture 'rnn'"),
        ("lstm", "gpt-tiny", {}, "is for architecture 'gpt'"),
        (None, None, {}, "give --arch or --preset"),
        (None, "gpt-tiny", {"n_layers": 3}, r"unknown setting\(s\) \['n_layers'\]"),
        (None, "gpt-tiny", {"n_head": 3}, "multiple of n_head"),
        (None, "gpt-tiny", {"lr": "fast"}, "lr must be float"),
        (None, "gpt-tiny", {"batching": "shuffled"}, "batching must be one of"),
        (None, "gpt-tiny", {"max_iters": 0}, "max_iters must be at least 1"),
    ],
)
def test_bad_configuration_is_refused_with_a_reason(arch, preset, overrides, problem):
    with pytest.raises(ConfigError, match=problem):
        resolve(arch, preset, overrides, vocab_size=10)


def test_learning_rate_warms_up_then_decays_to_min_lr():
    config = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=110)
    rates = [learning_rate(i, config) for i in range(130)]
    assert rates[0] < rates[5] < rates[9] <= 1e-3
    assert abs(rates[10] - 1e-3) < 1e-12
    assert all(a >= b for a, b in itertools.pairwise(rates[10:111]))
    assert abs(rates[60] - 5.5e-4) < 1e-9  # halfway down the cosine
    assert rates[110] == rates[129] == 1e-4
