"""The training loop: batches in, evaluations and best-validation checkpoints out."""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import time
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import charlm
from charlm.models import CharModel, DecodeState
from training import distributed, model_card
from training.artifacts import RunDirectory
from training.evaluation import autocast_for, estimate_loss, loss_metrics
from training.optim import learning_rate
from training.session import RunSpec, Session, prepare

logger = logging.getLogger(__name__)
PROGRESS_EVERY = 10  # iterations between progress-bar updates (each costs a device sync)


class TrainStep(nn.Module):
    """The module DDP and torch.compile wrap: one forward for both batching modes."""

    def __init__(self, model: CharModel, carry_state: bool):
        super().__init__()
        self.model = model
        self.carry_state = carry_state

    def forward(
        self, idx: Tensor, targets: Tensor, state: DecodeState | None
    ) -> tuple[Tensor | None, DecodeState | None]:
        if self.carry_state:
            _, loss, state = self.model.forward_carry(idx, targets, state)
            return loss, state
        return self.model(idx, targets)[1], None


def train(spec: RunSpec) -> dict[str, Any] | None:
    """Run a training job and return the summary of its best checkpoint.

    None when no checkpoint was written (validation loss never finite); an empty
    dict on torchrun ranks other than 0, which write nothing.
    """
    run = distributed.setup(spec.device)
    if not run.is_main:
        logging.getLogger("training").setLevel(logging.WARNING)  # rank 0 speaks for all
    try:
        session = prepare(spec, run)
        summary = Trainer(session, run).fit()
        return summary if run.is_main else {}
    finally:
        distributed.teardown(run)


class Trainer:
    def __init__(self, session: Session, run: distributed.Distributed):
        self.s = session
        self.run = run
        self.directory = RunDirectory(session.spec.out, replace_existing=session.spec.overwrite)
        self.started = time.perf_counter()
        self.summary = session.summary
        self.best_samples = model_card.samples(session.model, session.vocab) if session.summary else []
        self.evals_since_best = 0
        self.iteration = session.start_iter
        self.chars_per_iter = session.config.batch_size * session.seq_len * run.world_size
        step: nn.Module = TrainStep(session.model, session.config.batching == "streams")
        if run.enabled:
            step = DistributedDataParallel(step)
        self.step = torch.compile(step) if session.config.compile else step

    def fit(self) -> dict[str, Any] | None:
        """Train to max_iters (or early stop); on Ctrl-C, record how far it got and re-raise."""
        s = self.s
        logger.info(
            "training %s (%s parameters) on %s: %d train / %d val characters, %d per iteration",
            s.model.architecture, f"{s.model.num_parameters():,}", self.run.device,
            len(s.train_data), len(s.val_data), self.chars_per_iter,
        )
        try:
            self.loop()
        except KeyboardInterrupt:
            if self.run.is_main:
                self.finish()
            raise
        if self.run.is_main:
            self.finish()
        return self.summary

    def loop(self) -> None:
        s, config = self.s, self.s.config
        state: DecodeState | None = None
        iters = range(s.start_iter, config.max_iters + 1)
        bar = tqdm(iters, disable=not (s.spec.progress and self.run.is_main), unit="it", dynamic_ncols=True)
        window_start, window_iters = time.perf_counter(), 0
        for self.iteration in bar:
            iteration = self.iteration
            due = iteration % config.eval_interval == 0 or iteration == config.max_iters
            resumed_here = s.spec.resume and iteration == s.start_iter  # already evaluated
            if due and not resumed_here and (self.evaluate(iteration) or iteration == config.max_iters):
                break
            loss, state = self.train_step(iteration, state)
            window_iters += 1
            if window_iters == PROGRESS_EVERY:
                rate = self.chars_per_iter * window_iters / (time.perf_counter() - window_start)
                bar.set_postfix(loss=f"{loss.item():.4f}", chars_per_s=f"{rate:,.0f}")
                window_start, window_iters = time.perf_counter(), 0
        bar.close()

    def train_step(self, iteration: int, state: DecodeState | None) -> tuple[Tensor, DecodeState | None]:
        s = self.s
        for group in s.optimizer.param_groups:
            group["lr"] = learning_rate(iteration, s.config)
        x, y = s.batches.next()
        carried = state.detach() if state is not None and s.batches.continues else None
        with autocast_for(self.run.device):
            loss, state = self.step(x.to(self.run.device), y.to(self.run.device), carried)
        loss.backward()
        if s.config.grad_clip:
            nn.utils.clip_grad_norm_(s.model.parameters(), s.config.grad_clip)
        s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)
        return loss.detach(), state

    def evaluate(self, iteration: int) -> bool:
        """Score both splits, checkpoint on a better val loss; True when training should stop.

        Every rank evaluates the same windows with the same weights, so all
        ranks reach the same early-stopping decision without talking.
        """
        s, config, device = self.s, self.s.config, self.run.device
        losses = {
            name: estimate_loss(s.model, data, config.batch_size, s.seq_len, config.eval_iters, device)
            for name, data in (("train", s.train_data), ("val", s.val_data))
        }
        improved = losses["val"] < s.best_val
        if improved:
            s.best_val = losses["val"]
            self.evals_since_best = 0
        else:
            self.evals_since_best += 1
        if self.run.is_main:
            self.record(iteration, losses, improved)
        return bool(config.patience) and self.evals_since_best >= config.patience

    def record(self, iteration: int, losses: dict[str, float], improved: bool) -> None:
        s = self.s
        train, val = loss_metrics(losses["train"]), loss_metrics(losses["val"])
        sample = ""
        if s.config.sample_chars:
            sample = model_card.samples(s.model, s.vocab, s.config.sample_chars, seeds=(s.config.seed,))[0]
        entry = {
            "iter": iteration,
            **{f"train_{k}": v for k, v in train.items()},
            **{f"val_{k}": v for k, v in val.items()},
            "lr": learning_rate(iteration, s.config),
            "elapsed_s": round(self.elapsed(), 2),
            "sample": sample,
        }
        s.metrics.append(entry)
        logger.info(
            f"iter {iteration}: train loss {train['loss']:.4f}, val loss {val['loss']:.4f} "
            f"({val['bpc']:.3f} bits/char){' *best*' if improved else ''}\n  sample: {sample[:120]!r}"
        )
        if improved:
            self.checkpoint(iteration, entry)
        self.directory.write_metrics(s.metrics)

    def checkpoint(self, iteration: int, entry: dict[str, Any]) -> None:
        s = self.s
        self.summary = summary = self.make_summary(iteration, entry)
        training_state = {
            "iter": iteration,
            "best_val": s.best_val,
            "elapsed_s": self.elapsed(),
            "train_config": dataclasses.asdict(s.config),
            "optimizer": s.optimizer.state_dict(),
            "batches": s.batches.state_dict(),
        }
        self.best_samples = model_card.samples(s.model, s.vocab)
        card = model_card.render(s.spec.out.name, s.model, summary, self.best_samples)
        self.directory.write_checkpoint(s.model, s.vocab, summary, training_state, card)

    def finish(self) -> None:
        """Record in config.json and the model card how far the run went in the end."""
        if self.summary is None:
            return
        self.summary.update(iterations_run=self.iteration, total_wall_time_s=round(self.elapsed(), 1))
        card = model_card.render(self.s.spec.out.name, self.s.model, self.summary, self.best_samples)
        self.directory.write_summary(self.summary, card)

    def make_summary(self, iteration: int, entry: dict[str, Any]) -> dict[str, Any]:
        s = self.s
        command = s.spec.command
        if s.summary is not None:  # a resumed run: keep the command that started it
            command = f"{s.summary.get('command', '?')}, resumed with {command}"
        return {
            **s.corpus,
            "command": command,
            "iterations": iteration,
            "iterations_run": iteration,
            "wall_time_s": round(self.elapsed(), 1),
            "total_wall_time_s": round(self.elapsed(), 1),
            "hardware": describe_hardware(self.run.device, self.run.world_size),
            "world_size": self.run.world_size,
            "charlm_version": charlm.__version__,
            "torch_version": torch.__version__,
            "vocab_size": len(s.vocab),
            "val_fraction": s.config.val_fraction,
            "seq_len": s.seq_len,
            "eval_iters": s.config.eval_iters,
            **{k: entry[k] for k in ("train_loss", "val_loss", "train_bpc", "val_bpc")},
            "model_config": {k: v for k, v in dataclasses.asdict(s.model.config).items()},
            "train_config": dataclasses.asdict(s.config),
        }

    def elapsed(self) -> float:
        return self.s.elapsed_before + time.perf_counter() - self.started


def describe_hardware(device: torch.device, world_size: int) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    return f"{world_size} x {name}" if world_size > 1 else name


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
