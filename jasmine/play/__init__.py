"""``jasmine play``: the world model in a browser (``world``: the model side; ``server``: Starlette app)."""
