"""What a sequence asks of the sampler: validated once, where the request is made."""

from __future__ import annotations

import dataclasses
import random

MAX_SEED = 2**63 - 1  # seeds travel as int64
MAX_TOP_K = 2**31 - 1
MAX_PENALTY = 2.0  # frequency and presence penalties lie in [-2, 2], as OpenAI's do
MAX_LOGIT_BIAS = 100.0
# Bounds that keep every row finite in float32 (a temperature of 1e39 does not fit one), chosen where
# larger values change nothing one could tell: at temperature 100 the characters are all but equally
# likely, and a repetition penalty of 100 (or 0.01) already decides whether a seen character comes back.
MAX_TEMPERATURE = 100.0
MIN_REPETITION_PENALTY = 0.01
MAX_REPETITION_PENALTY = 100.0
MIN_TEMPERATURE = 1e-4  # below this, sampling is argmax in all but name


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How one sequence draws its characters; every default leaves the distribution as it is.

    temperature 0 is greedy argmax; top_k 0, top_p 1, min_p 0 and typical_p 1 switch those
    filters off. The penalties: `repetition_penalty` divides a positive logit (multiplies a
    negative one) of every character already in the prompt or the output (CTRL, as TGI does);
    `frequency_penalty` and `presence_penalty` subtract per occurrence in the output and once for
    any (OpenAI); `relative_frequency_penalty` subtracts by a character's share of the prompt and
    output together (TGI's `frequency_penalty`). `logit_bias` adds to given characters' logits.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    min_p: float = 0.0
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    relative_frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (character id, bias) pairs

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= MAX_TEMPERATURE:
            raise ValueError(f"temperature must be in [0, {MAX_TEMPERATURE:g}] (0 is greedy)")
        if not 0 <= self.top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be in [0, {MAX_TOP_K}] (0 switches it off)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be in [0, {MAX_SEED}]")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError("min_p must be in [0, 1] (0 switches it off)")
        if not 0.0 < self.typical_p <= 1.0:
            raise ValueError("typical_p must be in (0, 1] (1 switches it off)")
        if not MIN_REPETITION_PENALTY <= self.repetition_penalty <= MAX_REPETITION_PENALTY:
            raise ValueError(f"repetition_penalty must be in [{MIN_REPETITION_PENALTY:g}, "
                             f"{MAX_REPETITION_PENALTY:g}] (1 switches it off)")
        for name in ("frequency_penalty", "presence_penalty", "relative_frequency_penalty"):
            if not -MAX_PENALTY <= getattr(self, name) <= MAX_PENALTY:
                raise ValueError(f"{name} must be in [-{MAX_PENALTY:g}, {MAX_PENALTY:g}]")
        for char_id, bias in self.logit_bias:
            if char_id < 0 or not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
                raise ValueError(f"logit_bias takes character ids >= 0 and biases in [-100, 100], "
                                 f"not {char_id}: {bias}")

    @property
    def controlled(self) -> bool:
        """Whether anything beyond temperature, top-k and top-p shapes the distribution."""
        return (self.min_p > 0 or self.typical_p < 1 or self.repetition_penalty != 1 or self.frequency_penalty != 0
                or self.presence_penalty != 0 or self.relative_frequency_penalty != 0 or bool(self.logit_bias))

    @property
    def filtered(self) -> bool:
        """Whether the draw needs more than the scaled, sorted distribution: a greedy row or one
        whose temperature is floored, top-k or top-p (`charlm.sampling.sample`'s `filters`)."""
        return self.temperature < MIN_TEMPERATURE or self.top_k != 0 or self.top_p < 1

    @property
    def counts_prompt(self) -> bool:
        """Whether a penalty looks at the prompt's characters too."""
        return self.repetition_penalty != 1 or self.relative_frequency_penalty != 0


def resolve_seed(seed: int | None) -> int:
    """The seed a sequence draws with: its own, or a fresh random one (reported back to the client)."""
    return random.SystemRandom().randrange(MAX_SEED) if seed is None else seed
