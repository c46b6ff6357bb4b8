# Two commands from a fresh clone:  `make demo` (the lab's main job) and `make test` (the test suite).
# Both create .venv from requirements.txt when it is missing or out of date.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo smoke test bench lab clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

demo: $(STAMP)            ## run every notebook headlessly into runs/<time>/ with HTML copies
	$(PY) -m mao_lab.runner

smoke: $(STAMP)           ## the same, in the notebooks' smoke settings (seconds)
	$(PY) -m mao_lab.runner --smoke

test: $(STAMP)            ## the whole test suite, notebooks included
	$(PY) -m pytest

bench: $(STAMP)           ## speed and memory ratios, measured side by side
	$(PY) -m mao_lab.bench step
	$(PY) -m mao_lab.bench recorder

lab: $(STAMP)             ## JupyterLab on 127.0.0.1 with a generated token (printed in the log)
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 --no-browser --notebook-dir=notebooks

clean:
	rm -rf $(VENV) runs .pytest_cache
