"""The training loop: batches in, evaluations and best-validation checkpoints out."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import charlm
from charlm.models import CharModel, DecodeState
from training import distributed, model_card
from training.artifacts import RunDirectory
from training.evaluation import autocast_for, estimate_loss, loss_metrics
from training.events import EventLog
from training.hardware import describe_hardware
from training.interrupts import stop_on_interrupt
from training.optim import learning_rate
from training.progress import Progress
from training.session import RunSpec, Session, model_files, prepare

logger = logging.getLogger(__name__)
PROGRESS_EVERY = 10  # iterations between progress updates (each costs a device sync)


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
        self.session = session
        self.run = run
        self.directory = RunDirectory(session.spec.out, replace_existing=session.spec.overwrite,
                                      extra_files=model_files(session.spec))
        self.started = time.perf_counter()
        self.summary = session.summary
        self.best_samples = model_card.samples(session.model, session.vocab) if session.summary else []
        self.evals_since_best = 0
        self.iteration = session.start_iter
        self.stop = threading.Event()  # set by Ctrl-C or SIGTERM: the loop ends after its current iteration
        self.end_reason = "stopped"
        self.events = EventLog(session.spec.events if run.is_main else None)
        self.chars_per_iter = session.config.batch_size * session.seq_len * run.world_size
        step: nn.Module = TrainStep(session.model, session.config.batching == "streams")
        if run.enabled:
            step = DistributedDataParallel(step)
        self.step = torch.compile(step) if session.config.compile else step

    def fit(self) -> dict[str, Any] | None:
        """Train to max_iters (or early stop, or the time limit); when stopped by a signal, keep the
        latest state to resume from, record how far it got and raise KeyboardInterrupt."""
        session = self.session
        logger.info(
            "training %s (%s parameters) on %s: %d train / %d val characters, %d per iteration",
            session.model.architecture, f"{session.model.num_parameters():,}", self.run.device,
            len(session.train_data), len(session.val_data), self.chars_per_iter,
        )
        self.events.emit("start", step=session.start_iter, total_steps=session.config.max_iters,
                         chars_per_step=self.chars_per_iter, parameters=session.model.num_parameters(),
                         train_chars=len(session.train_data), valid_chars=len(session.val_data),
                         device=str(self.run.device))
        try:
            with stop_on_interrupt(self.stop, enabled=not self.run.enabled):
                self.loop()
        except KeyboardInterrupt:  # a second signal: the state may be half through a step, so none is kept
            if self.run.is_main:
                self.finish()
            raise
        stopped = self.end_reason == "stopped"  # by a signal, before the run's end
        if self.run.is_main:
            if stopped:
                self.keep_resume_state(self.iteration)
            else:
                self.directory.clear_resume_state()
            self.finish()
        if stopped:
            raise KeyboardInterrupt
        return self.summary

    def loop(self) -> None:
        session, config = self.session, self.session.config
        state: DecodeState | None = None
        iters = range(session.start_iter, config.max_iters + 1)
        progress = Progress(iters, PROGRESS_EVERY, enabled=session.spec.progress and self.run.is_main)
        window_start, window_iters = time.perf_counter(), 0
        for self.iteration in progress:
            iteration = self.iteration  # the steps done so far
            out_of_time = config.max_minutes > 0 and self.elapsed() >= config.max_minutes * 60
            due = iteration % config.eval_interval == 0 or iteration == config.max_iters or out_of_time
            resumed_here = session.spec.resume and iteration == session.start_iter  # already evaluated
            if due and not resumed_here:
                if self.evaluate(iteration):
                    self.end_reason = "early_stop"
                    break
                window_start, window_iters = time.perf_counter(), 0  # the speed is of training alone
            if iteration == config.max_iters or out_of_time:
                self.end_reason = "finished" if iteration == config.max_iters else "time_limit"
                break
            if self.stop.is_set():  # after the checks above: a run stopped at its end is finished
                break
            loss, state = self.train_step(iteration, state)
            window_iters += 1
            if window_iters == PROGRESS_EVERY:
                rate = self.chars_per_iter * window_iters / (time.perf_counter() - window_start)
                progress.update(iteration, loss.item(), rate)
                self.events.emit("progress", step=iteration + 1, train_loss=round(loss.item(), 5),
                                 lr=learning_rate(iteration, config), chars_per_s=round(rate, 1))
                window_start, window_iters = time.perf_counter(), 0
        progress.close()

    def train_step(self, iteration: int, state: DecodeState | None) -> tuple[Tensor, DecodeState | None]:
        session = self.session
        for group in session.optimizer.param_groups:
            group["lr"] = learning_rate(iteration, session.config)
        x, y = session.batches.next()
        carried = state.detach() if state is not None and session.batches.continues else None
        with autocast_for(self.run.device):
            loss, state = self.step(x.to(self.run.device), y.to(self.run.device), carried)
        loss.backward()
        if session.config.grad_clip:
            nn.utils.clip_grad_norm_(session.model.parameters(), session.config.grad_clip)
        session.optimizer.step()
        session.optimizer.zero_grad(set_to_none=True)
        return loss.detach(), state

    def evaluate(self, iteration: int) -> bool:
        """Score both splits, checkpoint on a better val loss; True when training should stop.

        Every rank evaluates the same windows with the same weights, so all
        ranks reach the same early-stopping decision without talking.
        """
        session, config, device = self.session, self.session.config, self.run.device
        losses = {
            name: estimate_loss(session.model, data, config.batch_size, session.seq_len, config.eval_iters,
                                device)
            for name, data in (("train", session.train_data), ("val", session.val_data))
        }
        improved = losses["val"] < session.best_val
        if improved:
            session.best_val = losses["val"]
            self.evals_since_best = 0
        else:
            self.evals_since_best += 1
        if self.run.is_main:
            self.record(iteration, losses, improved)
        return bool(config.patience) and self.evals_since_best >= config.patience

    def record(self, iteration: int, losses: dict[str, float], improved: bool) -> None:
        session = self.session
        train, val = loss_metrics(losses["train"]), loss_metrics(losses["val"])
        sample = ""
        if session.config.sample_chars:
            seeds = (session.config.seed,)
            sample = model_card.samples(session.model, session.vocab, session.config.sample_chars, seeds)[0]
        entry = {
            "iter": iteration,
            **{f"train_{k}": v for k, v in train.items()},
            **{f"val_{k}": v for k, v in val.items()},
            "lr": learning_rate(iteration, session.config),
            "elapsed_s": round(self.elapsed(), 2),
            "sample": sample,
        }
        session.metrics.append(entry)
        logger.info(
            "iter %d: train loss %.4f, val loss %.4f (perplexity %.2f, %.3f bits/char)%s\n  sample: %r",
            iteration, train["loss"], val["loss"], val["perplexity"], val["bpc"],
            " *best*" if improved else "", sample[:120],
        )
        self.events.emit("eval", step=iteration, train_loss=round(train["loss"], 5), valid_loss=round(val["loss"], 5),
                         valid_bpc=round(val["bpc"], 5), lr=entry["lr"], best=improved, sample=sample)
        if improved:
            self.checkpoint(iteration, entry)
        elif iteration > session.start_iter:  # a crash from here on loses no more than the steps since
            self.keep_resume_state(iteration)
        self.directory.write_metrics(session.metrics)

    def checkpoint(self, iteration: int, entry: dict[str, Any]) -> None:
        session = self.session
        summary = self.make_summary(iteration, entry)
        samples = model_card.samples(session.model, session.vocab)
        card = model_card.render(session.spec.out.name, session.model, summary, samples)
        self.directory.write_checkpoint(session.model, session.vocab, summary, self.training_state(iteration), card)
        self.summary, self.best_samples = summary, samples  # only once on disk
        self.events.emit("checkpoint", step=iteration, kind="best", valid_loss=round(entry["val_loss"], 5))

    def keep_resume_state(self, iteration: int) -> None:
        """The latest weights and state beside the best checkpoint: `--resume` continues from them."""
        if self.summary is None or iteration <= self.summary["iterations"]:
            return  # nothing newer than the best checkpoint, which resumes as well
        state = {**self.training_state(iteration), "model": self.session.model.state_dict()}
        if self.directory.write_resume_state(state):
            self.events.emit("checkpoint", step=iteration, kind="resume")

    def training_state(self, iteration: int) -> dict[str, Any]:
        session = self.session
        return {
            "iter": iteration,
            "best_val": session.best_val,
            "elapsed_s": self.elapsed(),
            "train_config": dataclasses.asdict(session.config),
            "optimizer": session.optimizer.state_dict(),
            "batches": session.batches.state_dict(),
            "torch_rng": torch.get_rng_state(),  # dropout continues where it was
        }

    def finish(self) -> None:
        """Record in config.json and the model card how far the run went in the end."""
        self.events.emit("end", step=self.iteration, reason=self.end_reason)
        self.events.close()
        if self.summary is None:
            return
        self.summary.update(iterations_run=self.iteration, total_wall_time_s=round(self.elapsed(), 1))
        session = self.session
        card = model_card.render(session.spec.out.name, session.model, self.summary, self.best_samples)
        self.directory.write_summary(self.summary, card)

    def make_summary(self, iteration: int, entry: dict[str, Any]) -> dict[str, Any]:
        session = self.session
        command = session.spec.command
        if session.summary is not None:  # a resumed run: keep the command that started it
            command = f"{session.summary.get('command', '?')}, resumed with {command}"
        return {
            **session.corpus,
            "command": command,
            "iterations": iteration,
            "iterations_run": iteration,
            "wall_time_s": round(self.elapsed(), 1),
            "total_wall_time_s": round(self.elapsed(), 1),
            "hardware": describe_hardware(self.run.device, self.run.world_size),
            "world_size": self.run.world_size,
            "charlm_version": charlm.__version__,
            "torch_version": torch.__version__,
            "vocab_size": len(session.vocab),
            "val_fraction": session.config.val_fraction,
            "seq_len": session.seq_len,
            "eval_iters": session.config.eval_iters,
            **{k: entry[k] for k in ("train_loss", "val_loss", "train_bpc", "val_bpc")},
            "model_config": {k: v for k, v in dataclasses.asdict(session.model.config).items()},
            "train_config": dataclasses.asdict(session.config),
        }

    def elapsed(self) -> float:
        return self.session.elapsed_before + time.perf_counter() - self.started
