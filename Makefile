# Two commands do all the set-up on a machine that has only python3 and pip:
#   make demo   the end-to-end demo
#   make test   the whole test suite
#   make lint   ruff: lint and format checks (CI runs them too)
# Both install uv (with pip) if it is missing, then the locked environment in .venv, compiled to bytecode
# once (where PYTHONDONTWRITEBYTECODE is set, every process would otherwise compile its imports: ~6 s each).
PYTHON ?= python3
UV := $(PYTHON) -m uv
EXTRAS ?= --extra coinrun --extra play
TEST_EXTRAS ?= $(EXTRAS) --extra wandb --extra atari --extra minatar --extra notebook --extra cluster

.PHONY: demo test lint sync bootstrap

bootstrap:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv

sync: bootstrap
	$(UV) sync --locked $(EXTRAS) --group dev --compile-bytecode

demo: sync
	$(UV) run --locked $(EXTRAS) jasmine demo

test: bootstrap
	$(UV) sync --locked $(TEST_EXTRAS) --group dev --compile-bytecode
	$(UV) run --locked $(TEST_EXTRAS) --group dev pytest -q -n auto --maxschedchunk 1 --durations 25

lint: bootstrap
	$(UV) sync --locked $(TEST_EXTRAS) --group dev --compile-bytecode
	$(UV) run --locked --no-sync ruff check .
	$(UV) run --locked --no-sync ruff format --check .
