"""The transformers peer of bench/engine.py: a charlm GPT as Hugging Face's GPT2LMHeadModel, timed in
its own `generate` (KV cache, sampling at the bench's temperature).

charlm's GPT is GPT-2's architecture at another size: the same pre-LayerNorm blocks, fused q/k/v
projection (q, k, v then heads, in that order), exact GELU, learned positions and tied embeddings.
GPT-2 keeps its projections as Conv1D, (in, out): the transposes of nn.Linear's weights. A model
trained without biases gets zero biases. `convert` checks that the logits agree before any timing.
transformers is an optional dependency of the bench only (the `bench` extra).
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from charlm.models import CharModel

LOGIT_TOLERANCE = 1e-4  # float32 rounding, over a few layers


def _copy(target: Tensor, source: Tensor | None) -> None:
    with torch.no_grad():
        target.copy_(source if source is not None else torch.zeros_like(target))


def _linear_to_conv1d(conv: nn.Module, linear: nn.Linear) -> None:
    _copy(conv.weight, linear.weight.t())  # (in, out)
    _copy(conv.bias, linear.bias)


def convert(model: CharModel) -> nn.Module:
    """`model`, a charlm GPT, as a GPT2LMHeadModel with the same weights; raises if the logits of a
    test sequence differ by more than LOGIT_TOLERANCE."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    config = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                        n_head=c.n_head, activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, layer_norm_epsilon=1e-5, bos_token_id=0, eos_token_id=None)
    peer = GPT2LMHeadModel(config).eval()
    _copy(peer.transformer.wte.weight, model.wte.weight)
    _copy(peer.transformer.wpe.weight, model.wpe.weight)
    for ours, theirs in zip(model.blocks, peer.transformer.h, strict=True):
        for a, b in ((ours.ln_1, theirs.ln_1), (ours.ln_2, theirs.ln_2)):
            _copy(b.weight, a.weight)
            _copy(b.bias, a.bias)
        _linear_to_conv1d(theirs.attn.c_attn, ours.attn.c_attn)
        _linear_to_conv1d(theirs.attn.c_proj, ours.attn.c_proj)
        _linear_to_conv1d(theirs.mlp.c_fc, ours.mlp.c_fc)
        _linear_to_conv1d(theirs.mlp.c_proj, ours.mlp.c_proj)
    _copy(peer.transformer.ln_f.weight, model.ln_f.weight)
    _copy(peer.transformer.ln_f.bias, model.ln_f.bias)
    peer.tie_weights()
    with torch.inference_mode():
        idx = torch.randint(0, c.vocab_size, (2, min(c.block_size, 64)), generator=torch.Generator().manual_seed(0))
        gap = (peer(idx).logits - model(idx)[0]).abs().max().item()
    if gap > LOGIT_TOLERANCE:
        raise AssertionError(f"GPT2LMHeadModel's logits differ from charlm's by {gap:.2e}")
    return peer


@torch.inference_mode()
def generate_rate(peer: nn.Module, ids: list[int], batch: int, chars: int, temperature: float = 0.8) -> float:
    """Characters per second of `peer.generate` for `batch` rows of `chars` characters from `ids`."""
    idx = torch.tensor([ids] * batch)  # (B, T)
    options = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0, "pad_token_id": 0}
    peer.generate(idx, max_new_tokens=5, min_new_tokens=5, **options)  # first-use costs out of the way
    start = time.perf_counter()
    out = peer.generate(idx, max_new_tokens=chars, min_new_tokens=chars, **options)
    elapsed = time.perf_counter() - start
    assert out.size(1) == len(ids) + chars, out.shape
    return batch * chars / elapsed
