# The two commands a new user needs (see README). Each does all set-up first.
.PHONY: demo test setup screenshot screenshots bench docs

VENV := .venv/bin

setup:
	@bash .ci/setup

# Open napari with the plugin docked on bundled sample data (needs a display; see README).
demo: setup
	$(VENV)/glandseg gui --sample glas

# Run the test suite (Xvfb is started by pytest-xvfb), after ruff, mypy on the core and the
# docs build.
test: setup
	$(VENV)/ruff check src tests benchmarks examples
	$(VENV)/mypy
	NO_MKDOCS_2_WARNING=1 $(VENV)/mkdocs build --strict --quiet
	$(VENV)/python -m pytest -n 2

# The docs site (MkDocs Material + mkdocstrings), offline, into build/site.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/mkdocs build --strict

# No display? Render the same window under Xvfb into demo.png and exit.
screenshot: setup
	xvfb-run -a -s "-screen 0 1600x1000x24" $(VENV)/glandseg gui --sample glas --screenshot demo.png

# README screenshots: the window and each dock widget (docs/images/*.png).
screenshots: setup
	xvfb-run -a -s "-screen 0 1600x1000x24" $(VENV)/python examples/screenshots.py --out docs/images

# Benchmarks: DATA is the folder of public data sets (docs/data.md).
DATA ?=
bench: setup
	@test -n "$(DATA)" || { echo "set DATA to the folder of public data sets (docs/data.md): make bench DATA=..."; exit 2; }
	$(VENV)/python benchmarks/bench_models.py
	DATA=$(DATA) $(VENV)/python benchmarks/bench_inference.py --data $(DATA)
	$(VENV)/python benchmarks/bench_metrics.py
	xvfb-run -a $(VENV)/python benchmarks/bench_ui.py
