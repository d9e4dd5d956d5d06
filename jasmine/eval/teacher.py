"""Teacher-forced cross-entropy of a MaskGIT model at fixed mask ratios, with clean and with masked context.

MaskGIT samples a frame by unmasking it from all tokens masked down to one, with every earlier frame clean;
training masks every frame t >= 1 at one ratio. This measures the model in both regimes, on held-out clips:
for each ratio r, the tokens of frame t >= 1 are masked independently with probability r and the
cross-entropy of the masked tokens is taken

- with **clean context**: frames before t unmasked, as in sampling (one forward per frame t; attention is
  causal in time, so frame t's logits see frames <= t only);
- with **masked context**: every frame t >= 1 masked at r at once, as in training.

Each clip's mean over its masked tokens is one value; intervals are bootstraps over clips (episodes). ``jasmine
eval`` takes the first ``seq_len`` frames of each of its clips (the model's training window).

Dimension key: B clips, T frames, N tokens per frame, A action width, W logit width.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jasmine.eval.metrics import bootstrap, resamples
from jasmine.models.dynamics import token_terms

RATIOS = (0.9, 0.5, 0.25, 0.1)


@partial(jax.jit, static_argnums=0)
def _clip_ce(graphdef, state, ids_BTN, mask_BTN, a_BTA):
    """Per clip: the summed cross-entropy of the masked tokens, and their count."""
    dyn = nnx.merge(graphdef, state)
    ce_BTN, _, _ = token_terms(dyn(ids_BTN, mask_BTN, a_BTA), ids_BTN, dyn.digits)
    m = mask_BTN.astype(jnp.float32)
    return (ce_BTN * m).sum(axis=(1, 2)), m.sum(axis=(1, 2))


@partial(jax.jit, static_argnums=0)
def _conditioning(graphdef, state, batch):
    return nnx.merge(graphdef, state).frame_conditioning(batch)[0]


def teacher_forced_sums(genie, batch, ids_BTN, key, ratios=RATIOS) -> dict[str, np.ndarray]:
    """{"clean/r" | "masked/r": [B, 2] (summed masked-token cross-entropy, masked tokens)} for one batch of clips
    (``batch``: its frames, and its actions for a model trained on real actions; ``ids_BTN``: their tokens)."""
    inputs = {k: jnp.asarray(batch[k]) for k in ("frames", "actions") if k in batch}
    a_BTA = _conditioning(*nnx.split(genie), inputs)
    graphdef, state = nnx.split(genie.dynamics)
    B, T, N = ids_BTN.shape
    out = {}
    for i, r in enumerate(ratios):
        draw_BTN = jax.random.uniform(jax.random.fold_in(key, i), (B, T, N)) < r
        masked_BTN = draw_BTN.at[:, 0].set(False)
        out[f"masked/{r}"] = np.stack(_clip_ce(graphdef, state, ids_BTN, masked_BTN, a_BTA), -1)
        clean = np.zeros((B, 2))
        for t in range(1, T):  # the same tokens of frame t masked as above; frames before t clean
            only_t = jnp.zeros_like(draw_BTN).at[:, t].set(draw_BTN[:, t])
            clean += np.stack(_clip_ce(graphdef, state, ids_BTN, only_t, a_BTA), -1)
        out[f"clean/{r}"] = clean
    return out


def summarise(sums: dict[str, np.ndarray], seed: int = 0) -> dict:
    """Per ratio and context: the mean over clips of each clip's masked-token cross-entropy (nats), with a 95%
    bootstrap interval over clips, and the paired difference masked − clean context."""
    per_clip = {k: v[:, 0] / np.maximum(v[:, 1], 1) for k, v in sums.items()}
    idx = resamples(len(next(iter(per_clip.values()))), seed=seed)
    ratios = sorted({float(k.split("/")[1]) for k in per_clip}, reverse=True)
    return {
        "ratios": ratios,
        **{
            context: {str(r): bootstrap(per_clip[f"{context}/{r}"], idx) for r in ratios}
            for context in ("clean", "masked")
        },
        "masked_minus_clean": {
            str(r): bootstrap(per_clip[f"masked/{r}"] - per_clip[f"clean/{r}"], idx) for r in ratios
        },
    }
