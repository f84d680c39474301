# The two commands a new user needs (see README). Each does all set-up first.
.PHONY: demo test setup screenshot screenshots bench

VENV := .venv/bin

setup:
	@bash .ci/setup

# Open napari with the plugin docked on bundled sample data (needs a display; see README).
demo: setup
	$(VENV)/glandseg gui --sample glas

# Run the test suite (Xvfb is started by pytest-xvfb).
test: setup
	$(VENV)/ruff check src tests benchmarks examples && $(VENV)/python -m pytest

# No display? Render the same window under Xvfb into demo.png and exit.
screenshot: setup
	xvfb-run -a -s "-screen 0 1600x1000x24" $(VENV)/glandseg gui --sample glas --screenshot demo.png

# README screenshots: the window and each dock widget (docs/images/*.png).
screenshots: setup
	xvfb-run -a -s "-screen 0 1600x1000x24" $(VENV)/python examples/screenshots.py --out docs/images

# Benchmarks (DATA points at ../shared/data by default).
DATA ?= ../shared/data
bench: setup
	$(VENV)/python benchmarks/bench_models.py
	$(VENV)/python benchmarks/bench_inference.py --data $(DATA)
	$(VENV)/python benchmarks/bench_metrics.py
	xvfb-run -a $(VENV)/python benchmarks/bench_ui.py
