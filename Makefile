# Two commands do all the set-up: `make run` (the site) and `make test` (the suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test venv clean-venv

$(STAMP): requirements.txt requirements-dev.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) -m searchsite.launcher run

test: $(STAMP)
	$(PY) -m searchsite.launcher test $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
