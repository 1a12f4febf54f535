# Two commands: `make test` and `make demo`. Each sets up its own virtual environment from the
# package registry on first use (torch comes from the registry; a fresh install takes minutes).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test demo lint bench clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,export]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) launch/demo.py

lint: $(STAMP)
	$(PY) -m ruff check solider finetune eval tests benchmarks launch

clean-venv:
	rm -rf $(VENV)
