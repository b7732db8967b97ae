# Two commands on a fresh machine (Python >= 3.11): `make run` and `make test`. Both create .venv when it is
# missing (torch's CPU wheel pin first: an unpinned torch may pull a multi-GB CUDA build), install from
# constraints.txt (the exact versions the suite last passed with; pyproject.toml keeps ranges for users)
# and reuse what an earlier call installed.
#   make run [STUDY=mediation] [ARGS="--preset smoke"]   python -m interventions.run $(STUDY) $(ARGS)
#   make test [ARGS=-x]                                  the test suite (installs chromium for the UI test)
#   make docs                                            the documentation site into site/ (warnings are errors)
#   make lock                                            refresh constraints.txt from a fresh environment
PYTHON ?= python3
VENV ?= .venv
STUDY ?= fork_study
ARGS ?=
TORCH := torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt

.PHONY: run test docs lock browser

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.run: $(PY) pyproject.toml constraints.txt
	$(PIP) $(TORCH)
	$(PIP) -e .
	touch $@

$(VENV)/.test: $(VENV)/.run
	$(PIP) -e ".[test]"
	touch $@

$(VENV)/.docs: $(VENV)/.run
	$(PIP) -e ".[docs]"
	touch $@

run: $(VENV)/.run
	$(PY) -m interventions.run $(STUDY) $(ARGS)

# the browser test drives Debian's headless Chromium (docs/ui.md)
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "make test: the UI test needs Debian's chromium; run: sudo apt-get install -y chromium chromium-driver" >&2; \
	    exit 1; \
	  fi; \
	fi

test: $(VENV)/.test browser
	$(PY) -m pytest -q $(ARGS)

# the reference pages are generated from the code as it builds (docs/_gen/hooks.py)
docs: $(VENV)/.docs
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict   # (Material's notice about MkDocs 2 is not ours)

lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip
	.lock-venv/bin/python -m pip install -q $(TORCH) && .lock-venv/bin/python -m pip install -q -e ".[test]"
	( echo "# pip constraints: the exact versions the suite last passed with (make lock refreshes them)"; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable ) > constraints.txt
	rm -rf .lock-venv
