"""Token ids as digits, and how a dynamics model samples them.

Dimension key: W logit width (sum of the digits' radices), K digits.

A token id is read as mixed-radix digits (:class:`Digits`): a dynamics model predicts one
categorical per digit, the logits of all digits side by side (width W = sum of radices).
A VQ token is one digit of radix V: a plain softmax over the vocabulary. An FSQ token is
its grid coordinates, e.g. 4 digits of radix 8: 32 logits instead of 4096, and an
embedding shared by every token with the same digit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class Digits:
    """Token ids as mixed-radix digits (least significant first), one categorical per digit."""

    levels: tuple[int, ...]

    @property
    def width(self) -> int:
        return sum(self.levels)

    @property
    def vocab(self) -> int:
        return math.prod(self.levels)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Where each digit's logits start in the W logits."""
        return tuple(int(o) for o in np.cumsum((0,) + self.levels[:-1]))

    def digits(self, ids):
        """ids [...] → digits [..., K]."""
        basis = np.cumprod((1,) + self.levels[:-1]).astype(np.int32)
        return (ids[..., None] // basis) % np.asarray(self.levels, np.int32)

    def ids(self, digits_K):
        basis = np.cumprod((1,) + self.levels[:-1]).astype(np.int32)
        return jnp.sum(digits_K * basis, axis=-1).astype(jnp.int32)

    def log_softmax(self, logits_W) -> list:
        """Per digit, its log-probabilities [..., radix]."""
        return [
            jax.nn.log_softmax(logits_W[..., o : o + v], axis=-1)
            for o, v in zip(self.offsets, self.levels, strict=False)
        ]

    def log_prob(self, logits_W, ids):
        """log p(ids) = sum over digits of log p(digit)."""
        d = self.digits(ids)
        return sum(
            jnp.take_along_axis(lp, d[..., k : k + 1], axis=-1)[..., 0]
            for k, lp in enumerate(self.log_softmax(logits_W))
        )

    def sample(self, rng, logits_W, temperature: float, ordinal: bool = False, top_k: int = 0):
        """Ids drawn digit by digit; ``temperature`` 0: each digit's most likely value or, with ``ordinal``
        (digits that are ordered levels, as FSQ's), its expected value rounded: the least squared error.
        ``top_k`` > 0 samples each digit from its k most likely values only."""
        parts = [logits_W[..., o : o + v] for o, v in zip(self.offsets, self.levels, strict=False)]
        if top_k > 0:
            parts = [jnp.where(p < jax.lax.top_k(p, min(top_k, p.shape[-1]))[0][..., -1:], -jnp.inf, p) for p in parts]
        if temperature > 0:
            keys = jax.random.split(rng, len(parts))
            d = [jax.random.categorical(k, p / temperature, axis=-1) for k, p in zip(keys, parts, strict=False)]
        elif ordinal:
            d = [
                jnp.round(jax.nn.softmax(p, axis=-1) @ jnp.arange(p.shape[-1], dtype=p.dtype)).astype(jnp.int32)
                for p in parts
            ]
        else:
            d = [jnp.argmax(p, axis=-1) for p in parts]
        return self.ids(jnp.stack(d, axis=-1))


MASKGIT_STEPS, MASKGIT_CHOICE_TEMPERATURE = 25, 4.5


def token_digits(tok_cfg) -> Digits:
    """How a dynamics model reads a VQ/FSQ tokenizer's ids: FSQ digits, or one digit over the VQ vocabulary."""
    return Digits(tok_cfg.fsq_levels if tok_cfg.quantizer == "fsq" else (tok_cfg.vocab_size,))


class TokenFamily:
    """What the token families (MaskGIT, causal) share: discrete ids from a VQ/FSQ tokenizer, and how they
    check and resolve sampling options. (The diffusion family defines the same hooks for latents.)"""

    continuous = False
    maskgit_options = False
    family = ""

    @classmethod
    def check_sampling(cls, opts: SamplingOptions, tok_cfg) -> None:
        opts.check(token_digits(tok_cfg), cls.family, cls.maskgit_options)

    @classmethod
    def resolve_sampling(cls, opts: SamplingOptions) -> SamplingOptions:
        return opts.resolved(cls.maskgit_options)


@dataclass(frozen=True)
class SamplingOptions:
    """How a dynamics model draws frames: the sampling flags of ``sample``, ``eval`` and ``play``, defined once.
    ``steps`` and ``choice_temperature`` are MaskGIT's (None: its defaults, 25 and 4.5) and diffusion's ``steps``;
    families refuse what they cannot use."""

    steps: int | None = None
    """MaskGIT: steps per frame (default 25; steps that fix no token are skipped); diffusion: denoising steps K
    (default 16)."""
    temperature: float = 1.0
    """Sampling temperature (0 = argmax; for MaskGIT also no choice noise)."""
    choice_temperature: float | None = None
    """MaskGIT: Gumbel noise on the confidences that pick which tokens to keep, annealed to 0 (default 4.5)."""
    ordinal: bool = False
    """With temperature 0 and FSQ tokens: each digit's expected level (rounded) instead of its most likely one."""
    top_k: int = 0
    """Sample each digit from its k most likely values only (0 = all)."""
    context_noise: float | None = None
    """Diffusion only: past frames enter at signal level 1 - context_noise (default 0.1); --steps is K."""

    def resolved(self, maskgit_options: bool) -> SamplingOptions:
        """With MaskGIT's defaults filled in where it uses them (as recorded in eval results)."""
        if not maskgit_options:
            return self
        return replace(
            self,
            steps=self.steps or MASKGIT_STEPS,
            choice_temperature=MASKGIT_CHOICE_TEMPERATURE
            if self.choice_temperature is None
            else self.choice_temperature,
        )

    def check(self, digits: Digits, family: str, maskgit_only: bool) -> None:
        """Refuse options this family or these tokens cannot use."""
        if self.ordinal and (self.temperature > 0 or len(digits.levels) < 2):
            raise ValueError(
                "--ordinal needs --temperature 0 and an FSQ tokenizer (ordered levels); got temperature "
                f"{self.temperature} and token digits {digits.levels}"
            )
        if self.top_k < 0:
            raise ValueError(f"--top-k must be >= 0, got {self.top_k}")
        given = [
            f for f, v in (("--steps", self.steps), ("--choice-temperature", self.choice_temperature)) if v is not None
        ]
        if given and not maskgit_only:
            raise ValueError(
                f"{' and '.join(given)} {'is a' if len(given) == 1 else 'are'} MaskGIT option(s); a "
                f"{family} dynamics model samples one token at a time and has no unmasking steps"
            )
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if self.context_noise is not None:
            raise ValueError(
                f"--context-noise is a diffusion option; a {family} dynamics model conditions on clean tokens"
            )
