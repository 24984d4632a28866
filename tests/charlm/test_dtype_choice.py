"""dtype auto: on a CPU float32 without timing; the timing itself runs on any device."""

import torch

from charlm.dtype_choice import choose_dtype, convert, step_ms
from charlm.models import build_model

CONFIGS = {
    "gpt": {"vocab_size": 11, "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16},
    "lstm": {"vocab_size": 11, "hidden_size": 16, "n_layer": 1},
}


def test_dtype_auto_on_a_cpu_is_float32_without_timing():
    choice = choose_dtype(build_model("gpt", CONFIGS["gpt"]), 8)
    assert choice.dtype == torch.float32
    assert choice.describe() == {"dtype": "float32", "dtype_reason": "float32 on a CPU (dtype auto)"}


def test_a_timed_step_runs_for_every_family_in_either_dtype():
    for architecture, config in CONFIGS.items():
        for dtype in (torch.float32, torch.bfloat16):
            model = convert(build_model(architecture, config).eval(), dtype)
            assert next(model.parameters()).dtype == dtype
            assert step_ms(model, 3, steps=2) > 0
