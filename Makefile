# Two commands from a fresh clone:  `make demo` (the lab's main job) and `make test` (the test suite).
# Both create .venv from requirements.txt when it is missing or out of date.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo smoke test lint bench lab workshop room explorer test-browser clean study handouts slides wheelhouse answer-key

setup: $(STAMP)

# config/ goes into the venv: a kernel filter for ipykernel's TCP warning (every kernel the lab starts reads
# .venv/etc/ipython) and JupyterLab's settings without its news pop-up (.venv/share/jupyter/lab/settings).
# WHEELS=folder installs from a wheelhouse (`make wheelhouse`) without the network.
# PIP_INDEX="--extra-index-url https://download.pytorch.org/whl/cpu" takes torch's CPU-only build on Linux.
WHEELS ?=
PIP_INDEX ?=
PIP_SOURCE := $(if $(WHEELS),--no-index --find-links $(WHEELS),$(PIP_INDEX))
$(STAMP): requirements.txt pyproject.toml config/ipython_kernel_config.py config/lab-overrides.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(if $(WHEELS),,$(PY) -m pip install --upgrade --quiet pip)
	$(PY) -m pip install --quiet $(PIP_SOURCE) -r requirements.txt
	mkdir -p $(VENV)/etc/ipython $(VENV)/share/jupyter/lab/settings
	cp config/ipython_kernel_config.py $(VENV)/etc/ipython/ipython_kernel_config.py
	cp config/lab-overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	touch $(STAMP)

# The HTML copies are then made offline (mao_lab.handouts --in-place): MathJax and plotly.js once in
# runs/<time>/assets/, no CDN; they are rewritten even when a notebook failed, and the runner's status is kept.
DEMO_STAMP := $(shell date +%Y%m%d-%H%M%S)
DEMO_OUT ?= runs/$(DEMO_STAMP)
demo: $(STAMP)            ## every notebook into runs/<time>/ with offline HTML copies (about 13 min; docs/workshop.md)
	$(PY) -m mao_lab.runner --out $(DEMO_OUT); status=$$?; \
		$(PY) -m mao_lab.handouts $(DEMO_OUT) --in-place && exit $$status

smoke: $(STAMP)           ## the same, in the notebooks' smoke settings (about 6 min; docs/workshop.md)
	$(PY) -m mao_lab.runner --smoke --out $(DEMO_OUT); status=$$?; \
		$(PY) -m mao_lab.handouts $(DEMO_OUT) --in-place && exit $$status

test: $(STAMP)            ## the whole test suite, notebooks included
	$(PY) -m pytest

lint: $(STAMP)            ## ruff: lint and formatting (the settings are in pyproject.toml)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

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

# The class works in my-notebooks/ (git-ignored copies, never overwritten): a `git pull` never meets their edits.
workshop: $(STAMP)        ## JupyterLab on copies of the notebooks in my-notebooks/ (made once; the originals stay clean)
	mkdir -p my-notebooks
	for nb in notebooks/*.ipynb; do test -e my-notebooks/$$(basename $$nb) || cp $$nb my-notebooks/; done
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 --no-browser --notebook-dir=my-notebooks $(ALLOW_ROOT)

# One machine for a room: a JupyterLab per participant (127.0.0.1, own port, token and copy of notebooks/ in
# room/pNN/), behind one reverse proxy (docs/workshop.md has the nginx blocks: `python -m mao_lab.classroom nginx`).
PARTICIPANTS ?= 2
PORT_BASE ?= 8901
PUBLIC_URL ?=
room: $(STAMP)            ## a JupyterLab per participant; prints each one's link (PARTICIPANTS=n, PUBLIC_URL=https://host/)
	$(PY) -m mao_lab.classroom room --participants $(PARTICIPANTS) --port-base $(PORT_BASE) \
		$(if $(PUBLIC_URL),--public-url $(PUBLIC_URL))

explorer: $(STAMP)        ## the balance explorer as a web page (Voilà) on 127.0.0.1 with a token; RUNS=folder
	cd apps && MAO_LAB_RUNS="$(abspath $(RUNS))" JUPYTER_PATH="$(abspath apps/share)" \
		$(abspath $(VENV))/bin/voila balance_explorer.ipynb --template=offline \
		--no-browser --Voila.ip=127.0.0.1 --Voila.auto_token=True

test-browser: $(STAMP)    ## every notebook and the explorer app driven in headless Chromium (Playwright)
	$(PY) tests/browser/browser_test.py

HANDOUTS ?= handouts
answer-key: $(STAMP)      ## the instructor's answer key (every solution) in handouts/instructor/
	$(PY) -m mao_lab.exercises.answer_key --out $(HANDOUTS)/instructor

handouts: $(STAMP)        ## offline HTML of the newest run folder (RUN=runs/<time>) in handouts/, sizes printed
	$(PY) -m mao_lab.handouts $(RUN) --out $(HANDOUTS)

slides: $(STAMP)          ## opening and wrap-up slides (offline reveal.js) and the printable handout.html
	$(PY) -m mao_lab.handouts --slides --out $(HANDOUTS)

# The wheels of requirements.txt for a room without network.  pip downloads wheels for the Python version and
# operating system it runs on: build the wheelhouse on a machine like the room's.  On Linux torch comes from
# PyTorch's CPU-only index (PyPI's Linux wheel pulls the CUDA libraries, gigabytes); macOS and Windows wheels on
# PyPI are CPU-only already.  Install with `make setup WHEELS=wheelhouse`.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PIN := $(shell grep -E '^torch==' requirements.txt)
wheelhouse:               ## download every wheel into wheelhouse/ (CPU-only torch) and print its size
	mkdir -p wheelhouse
	grep -vE '^(torch==|-e )' requirements.txt > wheelhouse/requirements.txt
ifeq ($(shell uname -s),Linux)
	$(PYTHON) -m pip download --dest wheelhouse --index-url $(TORCH_CPU_INDEX) "$(TORCH_PIN)"
	echo "$(TORCH_PIN)+cpu" > wheelhouse/constraints.txt  # torchjd's torch: the CPU wheel above, not PyPI's
else
	echo "$(TORCH_PIN)" > wheelhouse/constraints.txt
endif
	$(PYTHON) -m pip download --dest wheelhouse --find-links wheelhouse -c wheelhouse/constraints.txt \
		"$(TORCH_PIN)" -r wheelhouse/requirements.txt "setuptools>=77" wheel pip
	du -sh wheelhouse

clean:
	rm -rf $(VENV) runs .pytest_cache
