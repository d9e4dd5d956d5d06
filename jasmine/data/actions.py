"""The generators' shared constants: what each environment's action ids mean, and which of them act alike.

``metadata.json`` records the meanings a generator used (``generator.action_meanings``) and its *effective*
action classes (``generator.effective_actions``: ids that the game treats the same share a class). CoinRun
datasets written before either was recorded get procgen's table, which never changes.
"""

from __future__ import annotations

# procgen's action table (combos of LEFT/RIGHT/UP/DOWN; the last six are keys CoinRun ignores).
COINRUN_ACTION_MEANINGS = ["LEFT+DOWN", "LEFT", "LEFT+UP", "DOWN", "NOOP", "UP", "RIGHT+DOWN", "RIGHT", "RIGHT+UP",
                           "D", "A", "W", "S", "Q", "E"]  # fmt: skip
# CoinRun's effective classes: horizontal move (none, left, right) × jump. DOWN does nothing in CoinRun (no
# ladders, no crouch) and UP is the jump; D/A/W/S/Q/E are ignored keys.
COINRUN_EFFECTIVE_NAMES = ["none", "left", "right", "jump", "left+jump", "right+jump"]


def coinrun_effective(meanings: list[str]) -> list[int]:
    """Class (index into ``COINRUN_EFFECTIVE_NAMES``) of each procgen key combination, e.g. ``LEFT+UP``."""
    classes = []
    for name in meanings:
        keys = set(name.split("+"))
        move = "left" if "LEFT" in keys else "right" if "RIGHT" in keys else ""
        jump = "jump" if "UP" in keys else ""
        classes.append(COINRUN_EFFECTIVE_NAMES.index("+".join(k for k in (move, jump) if k) or "none"))
    return classes


def effective_table(generator: str, meanings: list[str]) -> dict:
    """What a generator records as ``effective_actions``: class names and each action id's class.

    CoinRun merges its 15 key combinations into 6 classes; Atari's minimal action set and MinAtar's actions are
    already distinct, so each is its own class.
    """
    if generator == "coinrun":
        return {"names": list(COINRUN_EFFECTIVE_NAMES), "of_action": coinrun_effective(meanings)}
    return {"names": list(meanings), "of_action": list(range(len(meanings)))}
