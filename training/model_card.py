"""The README.md model card written into every model directory."""

from __future__ import annotations

import json
from typing import Any

from charlm.generation import generate
from charlm.models import CharModel
from charlm.sampling import SamplingParams
from charlm.vocab import Vocab

SAMPLE_SEEDS = (1, 2, 3)
SAMPLE_TEMPERATURE = 0.8
SAMPLE_CHARS = 300


def samples(
    model: CharModel, vocab: Vocab, length: int = SAMPLE_CHARS, seeds: tuple[int, ...] = SAMPLE_SEEDS
) -> list[str]:
    """Seeded samples from the start character, as `charlm generate` would give them."""
    params = [SamplingParams(temperature=SAMPLE_TEMPERATURE, seed=seed) for seed in seeds]
    was_training = model.training
    model.eval()
    texts = ["".join(c.char for c in generate(model, vocab, "", length, p)) for p in params]
    model.train(was_training)
    return texts


def render(name: str, model: CharModel, summary: dict[str, Any], texts: list[str]) -> str:
    s = summary
    rows = [
        ("architecture", f"`{model.architecture}`, {model.num_parameters():,} parameters"),
        ("vocabulary", f"{s['vocab_size']} characters"),
        ("data", f"`{s['data']}` ({s['data_chars']:,} characters, sha256 `{s['data_sha256']}`)"),
        ("split", f"first {1 - s['val_fraction']:.0%} train, last {s['val_fraction']:.0%} validation"),
        ("command", f"`{s['command']}`"),
        ("iterations", f"best checkpoint at iteration {s['iterations']} of {s['iterations_run']} run"),
        ("wall time", f"{s['total_wall_time_s'] / 60:.1f} minutes in all, "
                      f"{s['wall_time_s'] / 60:.1f} to the best checkpoint"),
        ("hardware", s["hardware"]),
        ("train loss", f"{s['train_loss']:.4f} nats ({s['train_bpc']:.3f} bits per character)"),
        ("validation loss", f"{s['val_loss']:.4f} nats ({s['val_bpc']:.3f} bits per character)"),
    ]
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    sample_blocks = "\n\n".join(
        f"Seed {seed}:\n\n```text\n{text}\n```" for seed, text in zip(SAMPLE_SEEDS, texts, strict=True)
    )
    return f"""# {name}

A character-level language model trained with charlm.

| | |
|---|---|
{table}

Losses are means over {s['eval_iters']} random windows of {s['seq_len']} characters per split.

## Configuration

```json
{json.dumps({"model": s["model_config"], "training": s["train_config"]}, indent=2, ensure_ascii=False)}
```

## Samples

Temperature {SAMPLE_TEMPERATURE}, starting from the start character, {SAMPLE_CHARS} characters
(`charlm generate --model <this directory> --prompt "" --temperature {SAMPLE_TEMPERATURE} --seed N`).

{sample_blocks}
"""
