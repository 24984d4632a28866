"""Model directories: weights, vocabulary and config, written atomically, loaded with checks.

A model directory holds
- model.safetensors: the weights; its metadata carries the format version,
  the architecture, the config as JSON and the vocabulary fingerprint, so the
  weights alone are enough to rebuild the model;
- vocab.json: the vocabulary (see charlm.vocab);
- config.json: the same architecture and config for people, plus a training summary.
Nothing here unpickles anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from charlm.models import CharModel, build_model
from charlm.models.lstm import move_compacted
from charlm.vocab import Vocab

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.json"
CONFIG_FILE = "config.json"


class ModelDirError(Exception):
    """A model directory cannot be loaded; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    name: str
    path: Path
    model: CharModel
    vocab: Vocab
    info: dict[str, Any]  # config.json as loaded
    fingerprint: str = ""  # of the weights file's bytes: which version of the model this is


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Call write(tmp) on a temporary file beside `path`, then rename it over `path`.

    A crash or an interrupt leaves either the old file or the new one, never half of one.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; model files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def distinct_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied parameters (the same Parameter object) kept once, under their first name.

    Identity, not storage, decides: cuDNN packs an LSTM's distinct weights into one buffer.
    """
    seen: set[int] = set()
    state = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            state[name] = tensor.detach()
    return state


def save_model(
    directory: Path,
    model: CharModel,
    vocab: Vocab,
    training: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write the three files of a model directory, each atomically, weights first."""
    directory.mkdir(parents=True, exist_ok=True)
    config = dataclasses.asdict(model.config)
    metadata = {
        "format_version": str(FORMAT_VERSION),
        "architecture": model.architecture,
        "config": json.dumps(config, sort_keys=True),
        "vocab_fingerprint": vocab.fingerprint,
    }
    tensors = {
        name: t.detach().to(device="cpu", dtype=dtype or t.dtype).contiguous()
        for name, t in distinct_state(model).items()
    }
    write_atomically(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata))
    write_atomically(directory / VOCAB_FILE, vocab.save)
    info = {
        "format_version": FORMAT_VERSION,
        "architecture": model.architecture,
        "config": config,
        "parameters": model.num_parameters(),
        "vocab_size": len(vocab),
        "vocab_fingerprint": vocab.fingerprint,
        "training": training or {},
    }
    write_json(directory / CONFIG_FILE, info)


def load_model(
    directory: Path | str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> LoadedModel:
    """Load and check a model directory; raises ModelDirError naming the file and problem."""
    directory = Path(directory)
    try:
        return _load(directory, device, dtype)
    except OSError as exc:  # permissions and the like: name what could not be read
        raise ModelDirError(f"{exc.filename or directory}: {exc.strerror or exc}") from None


def _load(directory: Path, device: torch.device | str, dtype: torch.dtype | None) -> LoadedModel:
    if not directory.is_dir():
        raise ModelDirError(f"{directory}: not a directory")
    for name in (WEIGHTS_FILE, VOCAB_FILE, CONFIG_FILE):
        _require_file(directory / name)
    info = _read_json(directory / CONFIG_FILE)
    vocab = _read_vocab(directory / VOCAB_FILE)
    metadata, tensors, fingerprint = _read_weights(directory / WEIGHTS_FILE)
    model = _build_from_metadata(directory / WEIGHTS_FILE, metadata)
    _check_agreement(directory, info, metadata, model, vocab)
    _load_tensors(directory / WEIGHTS_FILE, model, tensors)
    move_compacted(model.eval(), device, dtype)
    return LoadedModel(directory.name, directory, model, vocab, info, fingerprint)


def _require_file(path: Path) -> None:
    """A missing file is named as missing; an unreadable one raises its OSError (permissions,
    symlink loops), which load_model reports with the file's name."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ModelDirError(f"{path}: missing file") from None
    if not stat.S_ISREG(mode):
        raise ModelDirError(f"{path}: not a regular file")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelDirError(f"{path}: expected a JSON object")
    return data


def _read_vocab(path: Path) -> Vocab:
    try:
        return Vocab.from_dict(_read_json(path))
    except ValueError as exc:
        raise ModelDirError(f"{path}: invalid vocabulary ({exc})") from None


def _read_weights(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor], str]:
    """Metadata, tensors and fingerprint, all from one read of the file: the fingerprint is
    always that of the weights loaded, even when the file is replaced meanwhile."""
    data = path.read_bytes()
    try:
        header_length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_length])
        metadata = header.get("__metadata__") or {}
        tensors = load_safetensors(data)
    except Exception as exc:  # safetensors raises several types for damaged files
        raise ModelDirError(f"{path}: truncated or corrupt safetensors file ({exc})") from None
    return metadata, tensors, weights_fingerprint(data)


def weights_fingerprint(data: bytes) -> str:
    """A short hex digest of a weights file's bytes: a model's version."""
    return hashlib.sha256(data).hexdigest()[:16]


def _build_from_metadata(path: Path, metadata: dict[str, str]) -> CharModel:
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        raise ModelDirError(
            f"{path}: format version {version!r} is not supported (this charlm reads {FORMAT_VERSION})"
        )
    try:
        config = json.loads(metadata.get("config", ""))
        return build_model(metadata.get("architecture", ""), config)
    except (ValueError, TypeError) as exc:
        raise ModelDirError(f"{path}: {exc}") from None


def _check_agreement(
    directory: Path, info: dict[str, Any], metadata: dict[str, str], model: CharModel, vocab: Vocab
) -> None:
    config = dataclasses.asdict(model.config)
    if info.get("architecture") != model.architecture or info.get("config") != config:
        raise ModelDirError(
            f"{directory / CONFIG_FILE}: architecture or config disagrees with {WEIGHTS_FILE} "
            f"({model.architecture} {config})"
        )
    if metadata.get("vocab_fingerprint") != vocab.fingerprint:
        raise ModelDirError(
            f"{directory / VOCAB_FILE}: vocabulary fingerprint {vocab.fingerprint[:12]} does not match "
            f"the {str(metadata.get('vocab_fingerprint'))[:12]} that {WEIGHTS_FILE} was trained with"
        )
    if len(vocab) != config["vocab_size"]:
        raise ModelDirError(
            f"{directory / VOCAB_FILE}: {len(vocab)} characters, but the model has vocab_size "
            f"{config['vocab_size']}"
        )


def _load_tensors(path: Path, model: CharModel, tensors: dict[str, torch.Tensor]) -> None:
    expected = distinct_state(model)
    problems = [f"missing tensor {name!r}" for name in expected if name not in tensors]
    problems += [f"unexpected tensor {name!r}" for name in tensors if name not in expected]
    problems += [
        f"tensor {name!r} has shape {tuple(tensors[name].shape)}, the config needs {tuple(t.shape)}"
        for name, t in expected.items()
        if name in tensors and tensors[name].shape != t.shape
    ]
    if problems:
        raise ModelDirError(f"{path}: weights do not fit the config: " + "; ".join(problems[:5]))
    with torch.no_grad():
        for name, target in expected.items():
            target.copy_(tensors[name])
