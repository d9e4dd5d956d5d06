"""The generators' shared constants: what each environment's action ids mean.

``metadata.json`` records the meanings a generator used (``generator.action_meanings``); CoinRun datasets written
before that was recorded get procgen's table, which never changes.
"""

# procgen's action table (combos of LEFT/RIGHT/UP/DOWN; the last six are keys CoinRun ignores).
COINRUN_ACTION_MEANINGS = ["LEFT+DOWN", "LEFT", "LEFT+UP", "DOWN", "NOOP", "UP", "RIGHT+DOWN", "RIGHT", "RIGHT+UP",
                           "D", "A", "W", "S", "Q", "E"]  # fmt: skip
