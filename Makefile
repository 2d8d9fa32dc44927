# Two entry points for a fresh machine: `make demo` and `make test`.
# Everything they need (venv, pinned packages, the broker wheel, kcat, s3rver)
# is installed by the targets below on first use.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install tools demo test lint mypy bench bench-faults clean schemas config-example

$(STAMP): pyproject.toml constraints.txt requirements-broker.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements-broker.txt
	$(PY) -m pip install -q -c constraints.txt -e '.[test,lint]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/metaheal demo

test: install tools
	$(PY) -m pytest -n 2 --dist loadfile  # two processes, a broker each; a file's tests stay together

# ruff (lint + format check) and mypy, configured in pyproject.toml; `.ci/run` runs this before the tests.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@$(MAKE) --no-print-directory mypy

# mypy checks the installed module names (metaheal.ledger, ...), but streams/, agents/, ledger/ and
# schemas/ become sub-packages of metaheal only through setuptools' package-dir mapping, which mypy
# cannot follow: link them, next to metaheal/'s own modules, into the tree [tool.mypy] mypy_path names.
TYPECHECK := build/typecheck/metaheal

mypy: install
	@rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)
	@ln -s $(CURDIR)/metaheal/* $(TYPECHECK)/
	@for d in streams agents ledger schemas; do ln -s $(CURDIR)/$$d $(TYPECHECK)/$$d; done
	$(VENV)/bin/mypy

# Helpers outside PyPI, each installed only when missing: kcat (Debian package; we
# run it with the wheel's librdkafka, see metaheal/kcat.py), chromium and its driver
# (Debian packages; the console's browser tests drive them with selenium) and s3rver
# (npm, the local S3 server behind `metaheal broker --data-dir`), project-locally in .tools/.
S3RVER := .tools/node_modules/s3rver/bin/s3rver.js

tools: $(S3RVER)
	@command -v kcat >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq kcat; }
	@command -v jq >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq jq; }
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver; }

$(S3RVER):
	mkdir -p .tools
	npm install --prefix .tools --no-audit --no-fund --loglevel=error s3rver@3.7.1

bench: install tools
	$(PY) benchmarks/bench_broker.py
	$(PY) benchmarks/bench_codec.py
	$(PY) benchmarks/bench_streams.py
	$(PY) benchmarks/bench_scale.py --series 2000 --samples 20 --checkpoint-interval 20 --live-seconds 30
	$(PY) benchmarks/bench_console.py
	$(PY) benchmarks/eval_scorer.py
	$(PY) benchmarks/bench_nab.py

# each fault healed by `metaheal up` + a separate `metaheal simulate --scenario` (about 5 minutes)
bench-faults: install tools
	$(PY) benchmarks/bench_faults.py

schemas: install
	$(PY) -m metaheal.schemas

config-example: install
	$(VENV)/bin/metaheal config example > metaheal.yaml.example

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache build
