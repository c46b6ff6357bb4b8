# Two commands from a fresh clone:  `make demo` (the lab's main job) and `make test` (the test suite).
# Both create .venv from requirements.txt when it is missing or out of date.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo smoke test bench lab explorer test-browser clean study

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

STUDY ?= runs/study
STUDY_FLAGS ?=
study: $(STAMP)           ## the claims study (2 workers, one thread each; <= 90 min on 2 quiet cores) and its ledger; STUDY=folder, STUDY_FLAGS=--smoke
	OMP_NUM_THREADS=1 $(PY) -m mao_lab.study --workers 2 --out $(STUDY) $(STUDY_FLAGS)

bench: $(STAMP)           ## speed and memory ratios, measured side by side
	$(PY) -m mao_lab.bench step
	$(PY) -m mao_lab.bench recorder

# JupyterLab refuses to start as root (common in containers) unless told: pass --allow-root only when uid is 0.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
RUNS ?= runs

lab: $(STAMP)             ## JupyterLab on 127.0.0.1 with a generated token (printed in the log)
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 --no-browser --notebook-dir=notebooks $(ALLOW_ROOT)

explorer: $(STAMP)        ## the balance explorer as a web page (Voilà) on 127.0.0.1 with a token; RUNS=folder
	cd apps && MAO_LAB_RUNS="$(abspath $(RUNS))" $(abspath $(VENV))/bin/voila balance_explorer.ipynb \
		--no-browser --Voila.ip=127.0.0.1 --Voila.auto_token=True

test-browser: $(STAMP)    ## every notebook and the explorer app driven in headless Chromium (Playwright)
	$(PY) tests/browser/browser_test.py

clean:
	rm -rf $(VENV) runs .pytest_cache
