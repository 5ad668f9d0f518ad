# TokenToll. `make run` serves the shipped config.toml on 127.0.0.1:8080; `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CONFIG ?=
# --config only when CONFIG is given: otherwise $$TOKENTOLL_CONFIG, else ./config.toml
CONFIG_ARG := $(if $(CONFIG),--config $(CONFIG))

.PHONY: run test test-fast bench lock check clean binary

$(VENV)/.python-ok:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "TokenToll needs Python 3.11 or newer (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	@touch $@

$(VENV)/.runtime-installed: requirements.lock $(VENV)/.python-ok
	$(PY) -m pip install --quiet -r requirements.lock
	@touch $@

$(VENV)/.test-installed: requirements-test.lock $(VENV)/.runtime-installed
	$(PY) -m pip install --quiet -r requirements-test.lock
	@touch $@

run: $(VENV)/.runtime-installed
	$(PY) gateway.py $(CONFIG_ARG) $(ARGS)

check: $(VENV)/.runtime-installed
	$(PY) gateway.py $(CONFIG_ARG) --check

test: $(VENV)/.test-installed
	$(PY) -m pytest $(PYTEST_ARGS)

# The suite without the tests marked slow (the binary, nginx, a browser, the ganache chain, kill -9, several
# workers: see the marker in pyproject.toml); `make test` runs those too.
test-fast: $(VENV)/.test-installed
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: $(VENV)/.test-installed
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/metrics_scrape.py

# One self-contained executable, dist/tokentoll (PyInstaller onefile, packaging/tokentoll.spec): serves like
# gateway.py, with --config, --check and every operator command. Rebuilt only when gateway.py, core/, billing/,
# adapters/, the console's templates and static files, the spec or the pinned dependencies changed;
# pyinstaller comes from requirements-test.lock.
BINARY_SOURCES := gateway.py $(wildcard packaging/*) $(shell find core billing adapters -name '*.py') \
                  $(wildcard core/console/templates/* core/console/static/*)

binary: dist/tokentoll

dist/tokentoll: $(BINARY_SOURCES) $(VENV)/.test-installed
	PYTHONHASHSEED=0 $(PY) -m PyInstaller --noconfirm --clean --log-level WARN \
	  --distpath dist --workpath build/pyinstaller packaging/tokentoll.spec

# Re-pin everything from the direct dependencies in pyproject.toml (needs the package registry).
lock:
	rm -rf /tmp/tokentoll-lock && $(PYTHON) -m venv /tmp/tokentoll-lock
	/tmp/tokentoll-lock/bin/pip install --quiet .
	{ echo "# Runtime dependencies with every transitive pin. Regenerate with 'make lock'."; \
	  /tmp/tokentoll-lock/bin/pip freeze --exclude-editable | grep -iv '^tokentoll'; } > requirements.lock
	/tmp/tokentoll-lock/bin/pip install --quiet '.[test]'
	{ echo "# Runtime and test dependencies with every transitive pin. Regenerate with 'make lock'."; \
	  /tmp/tokentoll-lock/bin/pip freeze --exclude-editable | grep -iv '^tokentoll'; } > requirements-test.lock

clean:
	rm -rf $(VENV) .pytest_cache bench/out dist build/pyinstaller
