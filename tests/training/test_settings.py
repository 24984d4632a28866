"""The training settings docs/train.md documents, each shown to take effect: seed, grad_clip, weight_decay
(matrices and embeddings only), betas, lr_decay_iters, compile."""

from __future__ import annotations

import json
import math

import pytest
import torch

from charlm.checkpoint import load_model
from tests.helpers import TINY, train_tiny
from training import distributed
from training.session import RunSpec, prepare
from training.trainer import Trainer, TrainStep


def session_for(corpus_file, tmp_path, architecture="gpt", **overrides):
    preset, settings = TINY[architecture]
    spec = RunSpec(data=corpus_file, out=tmp_path / "m", preset=preset, device="cpu", progress=False,
                   overrides={**settings, **overrides})
    return prepare(spec, distributed.setup("cpu"))


def test_the_same_seed_trains_the_same_weights_and_another_seed_others(corpus_file, tmp_path):
    runs = {name: train_tiny("lstm", corpus_file, tmp_path / name, max_iters=8, eval_interval=8, seed=seed)
            for name, seed in (("a", 7), ("b", 7), ("c", 8))}
    weights = {name: load_model(out).model.state_dict() for name, out in runs.items()}
    assert all(torch.equal(weights["a"][key], weights["b"][key]) for key in weights["a"])
    assert not all(torch.equal(weights["a"][key], weights["c"][key]) for key in weights["a"])


def gradient_norms(corpus_file, tmp_path, grad_clip: float) -> list[float]:
    """The total gradient norm the optimizer steps with, over a few iterations."""
    session = session_for(corpus_file, tmp_path, grad_clip=grad_clip)
    norms = []
    step = session.optimizer.step

    def recording_step(*args, **kwargs):  # type: ignore[no-untyped-def]
        grads = [p.grad for p in session.model.parameters() if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
        return step(*args, **kwargs)

    session.optimizer.step = recording_step  # type: ignore[method-assign]
    trainer = Trainer(session, distributed.setup("cpu"))
    for iteration in range(4):
        trainer.train_step(iteration, None)
    return norms


def test_grad_clip_bounds_the_gradient_norm_and_0_turns_it_off(corpus_file, tmp_path):
    assert max(gradient_norms(corpus_file, tmp_path, grad_clip=0.05)) <= 0.05 * (1 + 1e-5)
    assert min(gradient_norms(corpus_file, tmp_path / "off", grad_clip=0.0)) > 0.05  # what was clipped


@pytest.mark.parametrize("architecture", sorted(TINY))
def test_weight_decay_shrinks_matrices_and_embeddings_only(corpus_file, tmp_path, architecture):
    """One AdamW step with zero gradients moves a parameter only by its decay, lr x weight_decay."""
    session = session_for(corpus_file, tmp_path, architecture, weight_decay=0.3, lr=0.1, warmup_iters=0)
    for group in session.optimizer.param_groups:
        group["lr"] = 0.1
    before = {name: p.detach().clone() for name, p in session.model.named_parameters()}
    for p in session.model.parameters():
        p.grad = torch.zeros_like(p)
    session.optimizer.step()
    decayed = set()
    for name, p in session.model.named_parameters():
        if torch.allclose(p, before[name] * (1 - 0.1 * 0.3)) and not torch.equal(p, before[name]):
            decayed.add(name)
        else:
            assert torch.equal(p, before[name]), f"{name} moved, but not by its decay"
    matrices = {name for name, p in session.model.named_parameters() if p.dim() >= 2}
    assert decayed == matrices
    embeddings = {f"{name}.weight" for name, module in session.model.named_modules()
                  if isinstance(module, torch.nn.Embedding)}
    assert embeddings <= decayed and (embeddings or architecture == "lstm")  # the tiny lstm is one-hot
    assert not any(name.endswith("bias") or ".ln" in name or "norm" in name for name in decayed)


def test_betas_reach_the_optimizer(corpus_file, tmp_path):
    session = session_for(corpus_file, tmp_path, beta1=0.8, beta2=0.95)
    assert {group["betas"] for group in session.optimizer.param_groups} == {(0.8, 0.95)}


def test_lr_decay_iters_ends_the_cosine_there_and_0_means_max_iters(corpus_file, tmp_path):
    """The learning rates each evaluation records, against the schedule computed here."""
    lr, min_lr, warmup = 5e-3, 1e-4, 5

    def recorded(name: str, decay: int) -> dict[int, float]:
        out = train_tiny("gpt", corpus_file, tmp_path / name, max_iters=40, eval_interval=10, warmup_iters=warmup,
                         lr=lr, min_lr=min_lr, lr_decay_iters=decay, sample_chars=0)
        return {m["iter"]: m["lr"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}

    def cosine(iteration: int, end: int) -> float:
        if iteration >= end:
            return min_lr
        return min_lr + 0.5 * (1 + math.cos(math.pi * (iteration - warmup) / (end - warmup))) * (lr - min_lr)

    early = recorded("early", 20)
    assert early[0] == pytest.approx(lr / (warmup + 1))  # iteration 0 of the linear warm-up
    assert [early[i] for i in (10, 20, 30, 40)] == pytest.approx([cosine(i, 20) for i in (10, 20, 30, 40)])
    assert early[20] == early[40] == min_lr
    assert recorded("default", 0)[20] == pytest.approx(cosine(20, 40)) and cosine(20, 40) > min_lr


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch._dynamo's
def test_compile_wraps_the_training_step_in_torch_compile(corpus_file, tmp_path):
    """Only the wrapping: compiling on a CPU takes minutes (torch.compile compiles on first call)."""
    compiled = Trainer(session_for(corpus_file, tmp_path, compile=True), distributed.setup("cpu"))
    assert isinstance(compiled.step, torch._dynamo.eval_frame.OptimizedModule)
    assert isinstance(compiled.step._orig_mod, TrainStep)
    plain = Trainer(session_for(corpus_file, tmp_path / "plain"), distributed.setup("cpu"))
    assert isinstance(plain.step, TrainStep)
