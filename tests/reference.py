"""The sampling controls computed by hand, to judge what a route drew.

The model's own distribution at each generated character comes from `forward` over the prompt and
the text so far (a recurrent model: `forward` over the whole text is exactly what decoding sees).
Each control is then applied here in float64 numpy, written from the docs' definitions
(docs/api-tgi.md, docs/api-openai.md) and not from `charlm.sampling`, and each `*_misses` function
lists the steps whose drawn character the control could not have produced. A route that dropped
the control draws some of those: the tests assert none in the controlled text and some in the
same request without the control.
"""

from __future__ import annotations

import numpy as np
import torch

from charlm.checkpoint import LoadedModel

TOLERANCE = 1e-4  # the server's float32 step against this forward: far inside it


def next_char_logits(loaded: LoadedModel, prompt: str, text: str) -> np.ndarray:
    """(len(text), V): the logits from which text[i] was drawn, after prompt + text[:i]."""
    ids = torch.from_numpy(loaded.vocab.encode(prompt + text)).long()[None]  # (1, T)
    with torch.inference_mode():
        logits, _ = loaded.model(ids)  # (1, T, V)
    return logits[0, len(prompt) - 1 : len(prompt) + len(text) - 1].double().numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def min_p_misses(logits: np.ndarray, drawn: list[int], min_p: float, temperature: float = 1.0) -> list[int]:
    """Steps whose character is less than `min_p` times as likely as the most likely one."""
    probs = softmax(logits / temperature)
    return [i for i, c in enumerate(drawn) if probs[i, c] < min_p * probs[i].max() - TOLERANCE]


def typical_misses(logits: np.ndarray, drawn: list[int], typical_p: float) -> list[int]:
    """Steps whose character is outside typical sampling's set: the characters whose surprise
    (-log p) is nearest the entropy, nearest first, until their mass reaches `typical_p`."""
    misses = []
    for i, c in enumerate(drawn):
        probs = softmax(logits[i])
        surprise = -np.log(probs)
        distance = np.abs(surprise - (probs * surprise).sum())
        order = np.argsort(distance)
        mass_before = np.cumsum(probs[order]) - probs[order]
        last_kept = order[mass_before < typical_p + TOLERANCE][-1]
        if distance[c] > distance[last_kept] + TOLERANCE:
            misses.append(i)
    return misses


def top_k_misses(logits: np.ndarray, drawn: list[int], k: int) -> list[int]:
    """Steps whose character is not among the `k` most likely."""
    return [i for i, c in enumerate(drawn) if (logits[i] > logits[i, c] + TOLERANCE).sum() >= k]


def top_p_misses(logits: np.ndarray, drawn: list[int], top_p: float, temperature: float = 1.0) -> list[int]:
    """Steps whose character is outside the smallest set of most likely characters whose mass
    reaches `top_p`."""
    probs = softmax(logits / temperature)
    misses = []
    for i, c in enumerate(drawn):
        more_likely = probs[i][probs[i] > probs[i, c] + TOLERANCE].sum()  # the mass before c
        if more_likely >= top_p + TOLERANCE:
            misses.append(i)
    return misses


def repetition_adjusted(logits: np.ndarray, prompt: list[int], drawn: list[int], penalty: float) -> np.ndarray:
    """The repetition penalty (CTRL): the logit of each character already in the prompt or the
    output is divided by `penalty` when positive, multiplied by it when negative."""
    adjusted = logits.copy()
    seen = set(prompt)
    for i, c in enumerate(drawn):
        for s in seen:
            adjusted[i, s] = logits[i, s] / penalty if logits[i, s] > 0 else logits[i, s] * penalty
        seen.add(c)
    return adjusted


def greedy_misses(adjusted: np.ndarray, drawn: list[int]) -> list[int]:
    """Steps whose character is not the most likely one after the adjustment."""
    return [i for i, c in enumerate(drawn) if adjusted[i, c] < adjusted[i].max() - TOLERANCE]


def tgi_frequency_adjusted(logits: np.ndarray, prompt: list[int], drawn: list[int], penalty: float) -> np.ndarray:
    """TGI's frequency_penalty: each logit minus penalty x its character's share of the prompt and
    the output so far."""
    adjusted = logits.copy()
    counts = np.bincount(prompt, minlength=logits.shape[1]).astype(np.float64)
    for i, c in enumerate(drawn):
        adjusted[i] -= penalty * counts / counts.sum()
        counts[c] += 1
    return adjusted


def openai_penalties_adjusted(logits: np.ndarray, drawn: list[int], frequency: float, presence: float) -> np.ndarray:
    """OpenAI's penalties: each logit minus frequency x the times its character was generated, and
    minus presence once if it was (the prompt does not count)."""
    adjusted = logits.copy()
    counts = np.zeros(logits.shape[1])
    for i, c in enumerate(drawn):
        adjusted[i] -= frequency * counts + presence * (counts > 0)
        counts[c] += 1
    return adjusted
