"""The files a training run writes into its model directory.

Nothing appears at the output path until the first checkpoint is complete: it
is assembled in a hidden sibling directory and renamed into place. Later
checkpoints replace each file atomically, weights first, so an interrupt or a
crash at any moment leaves a loadable model directory or none.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from charlm.checkpoint import CONFIG_FILE, WEIGHTS_FILE, save_model, write_atomically, write_json
from charlm.models import CharModel
from charlm.vocab import Vocab

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
RESUME_FILE = "resume_state.pt"  # the latest weights and state, when newer than the best checkpoint's
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
CARD_FILE = "README.md"


class RunDirectory:
    def __init__(self, path: Path, replace_existing: bool = False, extra_files: dict[str, str] | None = None):
        self.path = path
        self.replace_existing = replace_existing
        self.extra_files = extra_files or {}  # by name: text written beside the model (a chat template)
        self.published = (path / WEIGHTS_FILE).exists() and not replace_existing

    def write_checkpoint(
        self, model: CharModel, vocab: Vocab, summary: dict[str, Any], state: dict[str, Any], card: str
    ) -> None:
        target = self.path if self.published else self._staging()
        try:
            # The state goes first: a resume refuses a state whose iteration differs
            # from the one config.json records, so an interrupted checkpoint is caught.
            write_atomically(target / STATE_FILE, lambda tmp: torch.save(state, tmp))
            save_model(target, model, vocab, summary)
            write_atomically(target / CARD_FILE, lambda tmp: tmp.write_text(card, encoding="utf-8"))
            for name, text in self.extra_files.items():
                write_text(target / name, text)
            if not self.published:
                self._publish(target)
            self.clear_resume_state()  # older than this checkpoint now
        except BaseException:
            if target != self.path:
                shutil.rmtree(target, ignore_errors=True)
            raise

    def write_metrics(self, metrics: list[dict[str, Any]]) -> None:
        """metrics.jsonl and the loss curve; only once the directory exists."""
        if not self.published:
            return
        lines = "".join(json.dumps(m, ensure_ascii=False) + "\n" for m in metrics)
        write_atomically(self.path / METRICS_FILE, lambda tmp: tmp.write_text(lines, encoding="utf-8"))
        if plotting_available():
            write_atomically(self.path / PLOT_FILE, lambda tmp: plot_losses(metrics, tmp))

    def write_resume_state(self, state: dict[str, Any]) -> bool:
        """The latest state, weights included, to resume from; only once the directory exists."""
        if not self.published:
            return False
        write_atomically(self.path / RESUME_FILE, lambda tmp: torch.save(state, tmp))
        return True

    def clear_resume_state(self) -> None:
        """A finished run resumes, if ever, from its best checkpoint."""
        if self.published:
            (self.path / RESUME_FILE).unlink(missing_ok=True)

    def write_summary(self, summary: dict[str, Any], card: str) -> None:
        """Replace the training summary in config.json and the model card."""
        if not self.published:
            return
        info = json.loads((self.path / CONFIG_FILE).read_text(encoding="utf-8"))
        write_json(self.path / CONFIG_FILE, {**info, "training": summary})
        write_atomically(self.path / CARD_FILE, lambda tmp: tmp.write_text(card, encoding="utf-8"))

    def _staging(self) -> Path:
        staging = self.path.parent / f".{self.path.name}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return staging

    def _publish(self, staging: Path) -> None:
        old = self.path.parent / f".{self.path.name}.replaced-{os.getpid()}"
        if self.path.exists():
            os.replace(self.path, old)
        os.replace(staging, self.path)
        shutil.rmtree(old, ignore_errors=True)
        self.published = True
        logger.info("model directory %s created", self.path)


def write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_metrics(path: Path, up_to_iter: int) -> list[dict[str, Any]]:
    """The evaluations of an earlier run, up to the iteration a resume restarts from."""
    try:
        lines = (path / METRICS_FILE).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    metrics = [json.loads(line) for line in lines if line.strip()]
    return [m for m in metrics if m["iter"] <= up_to_iter]


@functools.cache
def plotting_available() -> bool:
    """Whether matplotlib is installed: the `train` extra, which a plain or serving install (and
    the serving image) leaves out; training goes on without its loss curve."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never open a window
    except ImportError:
        logger.warning("matplotlib is not installed: no %s (the train extra has it: pip install 'charlm[train]')",
                       PLOT_FILE)
        return False
    return True


def plot_losses(metrics: list[dict[str, Any]], path: Path) -> None:
    """Train and validation loss against iterations, as a PNG."""
    import matplotlib.pyplot as plt  # imported when first needed: the serving image has no matplotlib

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=100)
    iters = [m["iter"] for m in metrics]
    axes.plot(iters, [m["train_loss"] for m in metrics], label="train", marker=".")
    axes.plot(iters, [m["val_loss"] for m in metrics], label="validation", marker=".")
    axes.set_xlabel("iteration")
    axes.set_ylabel("loss (nats per character)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
