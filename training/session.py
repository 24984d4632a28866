"""Everything a training run needs before its first step: data, vocabulary, model, optimizer.

A fresh run builds these from a preset; `--resume` rebuilds them from a model
directory and its training_state.pt, loaded with weights_only=True.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from charlm.chat_template import ChatTemplateError, bundled_names, template_files
from charlm.checkpoint import ModelDirError, load_model
from charlm.models import CharModel, build_model
from charlm.vocab import UnknownCharactersError, Vocab
from training.artifacts import RESUME_FILE, STATE_FILE, read_metrics
from training.config import ConfigError, Preset, TrainConfig, apply_overrides, resolve
from training.data import DataError, StreamBatches, WindowBatches, check_long_enough, read_corpus, split
from training.distributed import Distributed
from training.optim import make_optimizer


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What the user asked for on the command line."""

    data: Path
    out: Path
    architecture: str | None = None
    preset: str | None = None
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    command: str = ""
    progress: bool = True
    chat_template: str | None = None  # a bundled template's name or a file, copied into the model directory
    valid_data: Path | None = None  # a validation text; None: the last val_fraction of data
    events: Path | None = None  # where the run's events go as JSON lines (training.events)
    init_from: Path | None = None  # a model directory whose weights and vocabulary a new run starts from


@dataclasses.dataclass
class Session:
    spec: RunSpec
    config: TrainConfig
    model: CharModel
    vocab: Vocab
    train_data: torch.Tensor
    val_data: torch.Tensor
    seq_len: int
    optimizer: torch.optim.AdamW
    batches: WindowBatches | StreamBatches
    corpus: dict[str, Any]  # data file facts for the model card
    start_iter: int = 0
    best_val: float = float("inf")
    elapsed_before: float = 0.0
    metrics: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    summary: dict[str, Any] | None = None  # of the checkpoint a resumed run starts from


STATE_KEYS = {"iter", "best_val", "elapsed_s", "train_config", "optimizer", "batches", "torch_rng"}
WINDOW_SEED_STRIDE = 1_000_003


def model_files(spec: RunSpec) -> dict[str, str]:
    """Files the model directory gets besides the model: its chat template, when one was asked for."""
    if spec.chat_template is None:
        return {}
    try:
        return template_files(spec.chat_template)
    except ChatTemplateError as exc:
        raise ConfigError(f"--chat-template: {exc} (bundled: {', '.join(bundled_names())})") from None


def check_output(spec: RunSpec) -> None:
    model_files(spec)  # a bad template fails now, not after training
    if spec.resume and spec.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; choose one")
    if spec.init_from is not None and (spec.resume or spec.architecture or spec.preset):
        raise ConfigError("--init-from takes the model's own architecture and settings: not with --resume, "
                          "--arch or --preset")
    if spec.resume and not (spec.out / STATE_FILE).is_file():
        raise ConfigError(f"cannot resume: {spec.out / STATE_FILE} does not exist")
    if not spec.resume and not spec.overwrite and spec.out.exists():
        raise ConfigError(
            f"{spec.out} already exists; pass --resume to continue it or --overwrite to replace it"
        )
    parent = spec.out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot create {spec.out}: {parent} is not a writable directory")


def prepare(spec: RunSpec, run: Distributed) -> Session:
    check_output(spec)
    text = read_corpus(spec.data)
    corpus = {
        "data": spec.data.name,
        "data_chars": len(text),
        "data_sha256": hashlib.sha256(spec.data.read_bytes()).hexdigest(),
    }
    if spec.resume:
        return _resume(spec, run, text, corpus)
    if spec.init_from is not None:
        return _start_from(spec, run, text, corpus, spec.init_from)
    vocab = Vocab.from_text(text + (read_corpus(spec.valid_data) if spec.valid_data else ""))
    architecture, model_config, config = resolve(spec.architecture, spec.preset, spec.overrides, len(vocab))
    torch.manual_seed(config.seed)
    model = build_model(architecture, dataclasses.asdict(model_config))
    return _session(spec, run, text, corpus, vocab, model, config)


def _resume(spec: RunSpec, run: Distributed, text: str, corpus: dict[str, Any]) -> Session:
    try:
        loaded = load_model(spec.out)
    except ModelDirError as exc:
        raise ConfigError(f"cannot resume: {exc}") from None
    summary = loaded.info.get("training") or {}
    state = _read_training_state(spec.out, summary.get("iterations"))
    latest = _read_resume_state(spec.out)
    if latest is not None and latest["iter"] > state["iter"]:  # stopped, or evaluated, after the best
        loaded.model.load_state_dict(latest.pop("model"))
        state = latest
    model_keys = sorted(set(spec.overrides) - {f.name for f in dataclasses.fields(TrainConfig)})
    if model_keys:
        raise ConfigError(f"cannot change model settings {model_keys} when resuming")
    if spec.overrides.get("batching", state["train_config"]["batching"]) != state["train_config"]["batching"]:
        raise ConfigError("cannot change batching when resuming")
    preset = dataclasses.replace(_as_preset(loaded.model), train=state["train_config"])
    _, config = apply_overrides(preset, spec.overrides, len(loaded.vocab))
    if state["iter"] >= config.max_iters:
        raise ConfigError(
            f"{spec.out} already reached max_iters {config.max_iters}; raise it with --set max_iters=N"
        )
    session = _session(spec, run, text, corpus, loaded.vocab, loaded.model.train(), config, state["iter"])
    try:
        session.optimizer.load_state_dict(state["optimizer"])
        session.batches.load_state_dict(state["batches"])
        session.metrics = read_metrics(spec.out, state["iter"])
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"cannot resume: {spec.out} holds an inconsistent training state ({exc})") from None
    torch.set_rng_state(state["torch_rng"])
    session.best_val = state["best_val"]
    session.elapsed_before = state["elapsed_s"]
    session.summary = summary
    return session


def _start_from(spec: RunSpec, run: Distributed, text: str, corpus: dict[str, Any], base: Path) -> Session:
    """A new run (iteration 0, a new optimizer) from a trained model's weights and vocabulary: the
    text must be written in that vocabulary."""
    try:
        loaded = load_model(base)
    except ModelDirError as exc:
        raise ConfigError(f"--init-from: {exc}") from None
    config = continued_config(loaded.model, loaded.info, spec.overrides)
    torch.manual_seed(config.seed)
    return _session(spec, run, text, corpus, loaded.vocab, loaded.model.train(), config)


def continued_config(model: CharModel, info: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    """The training settings of a run that starts from a trained model: those it was trained with,
    overridden; its model settings cannot change."""
    model_keys = sorted(set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)})
    if model_keys:
        raise ConfigError(f"cannot change model settings {model_keys} of the model a run starts from")
    trained = (info.get("training") or {}).get("train_config") or {}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    preset = dataclasses.replace(_as_preset(model), train={k: v for k, v in trained.items() if k in known})
    return apply_overrides(preset, overrides, model.config.vocab_size)[1]


def _read_resume_state(out: Path) -> dict[str, Any] | None:
    """resume_state.pt, the latest state kept after the best checkpoint; None without one."""
    path = out / RESUME_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:  # torch raises several types for damaged files
        raise ConfigError(f"cannot resume: {path} is unreadable ({exc}); delete it to resume from the best "
                          "checkpoint") from None
    missing = sorted((STATE_KEYS | {"model"}) - set(state)) if isinstance(state, dict) else ["model"]
    if missing:
        raise ConfigError(f"cannot resume: {path} lacks {missing}")
    return state


def _read_training_state(out: Path, checkpoint_iter: object) -> dict[str, Any]:
    """training_state.pt, checked to belong to the weights beside it."""
    path = out / STATE_FILE
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:  # torch raises several types for damaged files
        raise ConfigError(f"cannot resume: {path} is unreadable ({exc})") from None
    missing = sorted(STATE_KEYS - set(state)) if isinstance(state, dict) else sorted(STATE_KEYS)
    if missing:
        raise ConfigError(f"cannot resume: {path} lacks {missing}")
    if state["iter"] != checkpoint_iter:
        raise ConfigError(
            f"cannot resume: {path} (iteration {state['iter']}) and the weights (iteration "
            f"{checkpoint_iter}) are from different checkpoints; start again with --overwrite"
        )
    return state


def _as_preset(model: CharModel) -> Preset:
    config = {k: v for k, v in dataclasses.asdict(model.config).items() if k != "vocab_size"}
    return Preset(model.architecture, config, {})


def _session(
    spec: RunSpec, run: Distributed, text: str, corpus: dict[str, Any], vocab: Vocab, model: CharModel,
    config: TrainConfig, start_iter: int = 0,
) -> Session:
    if spec.valid_data is None:
        train_data, val_data = split(_encode(vocab, text, "data"), config.val_fraction)
    else:  # a text of its own: all of --data trains
        train_data = _encode(vocab, text, "data")
        val_data = _encode(vocab, read_corpus(spec.valid_data), "validation data")
    seq_len = sequence_length(model, config)
    check_long_enough("training", train_data, seq_len)
    check_long_enough("validation", val_data, seq_len)
    if config.batching == "streams":
        if not model.carries_state:
            raise ConfigError(
                f"batching 'streams' needs a recurrent model; {model.architecture} has no state to carry"
            )
        batches: WindowBatches | StreamBatches = StreamBatches(
            train_data, config.batch_size, seq_len, run.rank, run.world_size
        )
    else:
        # Each rank, and each resumed run, draws its own windows.
        seed = config.seed + WINDOW_SEED_STRIDE * run.rank + start_iter
        batches = WindowBatches(train_data, config.batch_size, seq_len, seed=seed)
    model.to(run.device)
    optimizer = make_optimizer(model, config, run.device)
    return Session(
        spec, config, model, vocab, train_data, val_data, seq_len, optimizer, batches, corpus, start_iter
    )


def _encode(vocab: Vocab, text: str, what: str) -> torch.Tensor:
    try:
        return torch.from_numpy(vocab.encode(text))
    except UnknownCharactersError as exc:
        raise DataError(f"the {what} has characters the model's vocabulary lacks: {exc}") from None


def sequence_length(model: CharModel, config: TrainConfig) -> int:
    context = model.context_size
    seq_len = config.seq_len or context
    if seq_len is None:
        raise ConfigError(f"set seq_len: the {model.architecture} model has no block_size to default to")
    if context is not None and seq_len > context:
        raise ConfigError(f"seq_len {seq_len} exceeds the model's block_size {context}")
    return seq_len
