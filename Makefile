# Two commands: `make demo` (set up, run the offline smoke study, print its table) and `make test`
# (the docs site built strictly, then the suite).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ltkd-installed

.PHONY: install demo docs test bench clean

# Outside the repository's files (git-ignored under the venv): the site is a build product, not a source.
DOCS_SITE := $(VENV)/docs-site

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]' 2>&1 | { grep -v '^WARNING: Location' || true; }
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/ltkd sweep studies/smoke.yaml
	$(BIN)/ltkd tables studies/smoke.yaml --out tables-out

# The documentation site (mkdocs.yml, docs/): strict, so a broken link or anchor, or a page left out of the
# nav, fails the build. It takes seconds.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir $(DOCS_SITE)

# The suite's real components (Chromium, PostgreSQL, SLURM, Fashion-MNIST) are Debian packages:
# installed here when missing and this user can, else one line gives the command.
test: install docs
	bash tests/system_packages.sh
	$(BIN)/pytest -q

bench: install
	PYTHONPATH=. $(BIN)/python bench/bench_losses.py
	PYTHONPATH=. $(BIN)/python bench/bench_data.py
	PYTHONPATH=. $(BIN)/python bench/bench_step.py
	PYTHONPATH=. $(BIN)/python bench/bench_packing.py
	PYTHONPATH=. $(BIN)/python bench/bench_teacher_logits.py

clean:
	rm -rf mlflow.db mlruns tables-out .pytest_cache
