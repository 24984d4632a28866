"""The command line's reference (docs/train.md, docs/generate.md) checked against the code: the
flags each command's parser takes, the training settings and their defaults, each architecture's
model settings and the presets, so the pages cannot drift from what `charlm` accepts."""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from charlm.cli import add_generate_command
from charlm.models import ARCHITECTURES
from training.cli import add_eval_command, add_train_command
from training.config import PRESETS, TrainConfig

DOCS = Path(__file__).resolve().parents[2] / "docs"
TRAIN = (DOCS / "train.md").read_text()


def flags(add_command: Callable[[argparse._SubParsersAction], None]) -> set[str]:
    """Every long option of a `charlm` subcommand, as its parser declares it."""
    commands = argparse.ArgumentParser().add_subparsers()
    add_command(commands)
    (parser,) = commands.choices.values()
    return {option for action in parser._actions for option in action.option_strings
            if option.startswith("--") and option != "--help"}


def table(text: str, header: str) -> list[list[str]]:
    """The rows (as cells) of the one table whose header row starts with `header`."""
    (body,) = re.findall(r"^\| *" + re.escape(header) + r" *\|.*\n\|[-| :]+\|\n((?:\|.*\n?)+)", text, re.MULTILINE)
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in body.splitlines()]


def in_code(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_train_flags_table_names_exactly_the_parsers_flags():
    documented = {code.split()[0] for row in table(TRAIN, "flag") for code in in_code(row[0])}
    assert documented == flags(add_train_command)


@pytest.mark.parametrize("add_command", [add_generate_command, add_eval_command], ids=["generate", "eval"])
def test_every_generate_and_eval_flag_is_named(add_command: Callable[[argparse._SubParsersAction], None]):
    named = set(re.findall(r"--[a-z][a-z-]*", (DOCS / "generate.md").read_text()))
    assert sorted(flags(add_command) - named) == []


def test_training_settings_table_names_every_setting_with_its_default():
    documented: dict[str, str] = {}
    for row in table(TRAIN, "setting"):
        names, defaults = in_code(row[0]), row[1].replace("`", "").split(", ")
        assert len(names) == len(defaults), row
        documented |= dict(zip(names, defaults, strict=True))
    fields = {field.name: field.default for field in dataclasses.fields(TrainConfig)}
    assert sorted(documented) == sorted(fields)
    for name, text in documented.items():
        value = fields[name]
        parsed = text == "true" if isinstance(value, bool) else type(value)(text) if value != "" else text
        assert parsed == value, f"{name}: the table says {text}, the code {value!r}"


def test_model_settings_name_each_architectures_config():
    """"Model settings: `gpt`: `block_size`, ... `lstm`: ...": each architecture's config fields but
    the vocabulary's size, which the data decides."""
    paragraph = TRAIN.split("Model settings: ", 1)[1].split("\n\n", 1)[0]
    parts = re.split(r"(?:^|\s)`(\w+)`: ", paragraph)[1:]
    documented = {arch: set(in_code(text)) for arch, text in zip(parts[::2], parts[1::2], strict=True)}
    assert sorted(documented) == sorted(ARCHITECTURES)
    for arch, names in documented.items():
        config = {field.name for field in dataclasses.fields(ARCHITECTURES[arch].config_class)} - {"vocab_size"}
        assert names == config, arch


def test_presets_table_names_every_preset():
    rows = table(TRAIN, "preset")
    assert [in_code(row[0])[0] for row in rows] == list(PRESETS)
    assert [row[1] for row in rows] == [preset.architecture for preset in PRESETS.values()]
