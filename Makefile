PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: run test venv bench clean typecheck

# The hot path is compiled with mypyc by `pip install` (setup.py); the list of
# compiled modules is src/presenced/_build.py COMPILED_MODULES.
C_SRC := src/presenced/sip/_scan.c
COMPILED_SRC := $(shell $(PYTHON) -c 'exec(open("src/presenced/_build.py").read()); print(*source_paths("src"))' 2>/dev/null)

$(VENV)/.installed: pyproject.toml setup.py
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or set PYTHON=...)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# An edited compiled module makes the editable install fall back to pure Python
# ("stale build" warning): recompile before running anything.
$(VENV)/.compiled: $(VENV)/.installed $(COMPILED_SRC) $(C_SRC) src/presenced/_build.py
	@if [ -n "$$(find $(COMPILED_SRC) $(C_SRC) src/presenced/_build.py -newer $(VENV)/.installed)" ]; then \
	  echo "recompiling the hot path (mypyc)"; $(PY) -m pip install -q --no-deps -e .; fi
	touch $@

venv: $(VENV)/.compiled

# What mypyc needs: the compiled modules type-check (and the runtime that wires them).
typecheck: venv
	$(PY) -m mypy --config-file pyproject.toml $(COMPILED_SRC) src/presenced/runtime

run: venv
	$(VENV)/bin/presenced serve $(ARGS)

test: venv
	@$(PY) -m pytest $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests: failing loudly" >&2; exit 1; fi; \
	exit $$rc

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info src/presenced_native__mypyc*.so
	find src -name '*.so' -delete

# Benchmarks: `make bench` runs the shared SIPp harness (../shared/bench) with
# Kamailio as baseline and presenced as "ours" (BENCH_MODE=quick|full,
# BENCH_REPEAT=N); results go to bench/results/. `make bench-micro` times the
# hot functions in-process. `make bench-backends` runs the harness once per
# storage backend and mode (BENCH_BACKENDS=memory,sqlite,postgresql,mysql,
# BENCH_STORE_MODES=wt,wb,db, BENCH_MODE=quick|full, BENCH_STEP_SECONDS=N;
# see bench/backends.py) into bench/results/<stamp>-backends/RESULTS.md.
# `make bench-memory` holds 100,000 publications + 100,000 subscriptions in
# Kamailio (memory-only) and presenced and compares their PSS (bench/state_memory.py,
# ARGS="--servers kamailio,presenced --records 20000" etc.) into
# bench/results/<stamp>-state-memory/RESULTS.md.
.PHONY: bench-micro bench-backends bench-memory
bench: venv
	VENV=$(VENV) bash bench/run-vs-kamailio.sh

bench-micro: venv
	$(PY) bench/micro.py $(ARGS)

bench-backends: venv
	$(PY) bench/backends.py $(ARGS)

bench-memory: venv
	BENCH_MEMORY_MAKE="make bench-memory$(if $(ARGS), ARGS='$(ARGS)')" $(PY) bench/state_memory.py $(ARGS)
