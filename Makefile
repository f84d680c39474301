# The two commands a new user needs (see README). Each does all set-up first.
.PHONY: demo test setup screenshots bench

VENV := .venv/bin

setup:
	@bash .ci/setup

# Open napari with the plugin docked on bundled sample data (needs a display; see README).
demo: setup
	$(VENV)/glandseg gui --sample glas

# Run the test suite (Xvfb is started by pytest-xvfb).
test: setup
	$(VENV)/ruff check src tests benchmarks examples && $(VENV)/python -m pytest

# Screenshots for the README, made under Xvfb.
screenshots: setup
	$(VENV)/python -m pytest tests/test_screenshots.py --screenshots=docs/images

bench: setup
	$(VENV)/python benchmarks/bench_models.py
