# The two commands of the README:
#   make lab    set up (once) and open the course in JupyterLab
#   make test   set up (once), then every unit test and every notebook (nbval, quick mode)
SHELL := /bin/bash
PY_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The torch release this project is tested with; installed first so that no other torch is fetched.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
FIRST_NOTEBOOK := notebooks/00_distillation_primer.ipynb
# Open a browser only where there is a display; on a server JupyterLab prints the URL to open.
LAB_FLAGS ?= $(if $(or $(DISPLAY),$(filter Darwin,$(shell uname -s))),,--no-browser) $(if $(filter 0,$(shell id -u)),--allow-root,) --ServerApp.ip=127.0.0.1
DEBIAN_FASHION := /usr/share/datasets/fashion-mnist
RAW_FASHION := data/FashionMNIST/raw/train-images-idx3-ubyte

.PHONY: lab test browser-test solutions-test setup data chromium notebooks finish clean-venv book book-test
.DEFAULT_GOAL := lab

# Reinstalled only when pyproject.toml changes (the stamp is newer otherwise).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[dev,cluster,lab]' $(TORCH_SPEC)
	touch $@

setup: $(VENV)/.installed

# Fashion-MNIST offline: the raw folder, else Debian's package (installed here when apt-get is
# usable as root), else torchvision's download; `python -m indistill_lab data` says which.
data: setup
	@if [ ! -f $(RAW_FASHION) ] && [ ! -d $(DEBIAN_FASHION) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && apt-get install -y -q dataset-fashion-mnist || echo "apt-get failed: falling back to the download"; fi
	$(PY) -m indistill_lab data

# Chromium for the browser test (tests/test_browser.py, driven by Playwright from the dev extras, which never
# downloads its own browsers): Debian's package, installed here when apt-get is usable as root; without it the
# test is skipped and says why.
CHROMIUM ?= /usr/bin/chromium
chromium:
	@if [ ! -x $(CHROMIUM) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && apt-get install -y -q chromium || echo "apt-get failed: the browser test will be skipped"; fi
	@[ -x $(CHROMIUM) ] || echo "No chromium at $(CHROMIUM): the browser test will be skipped."

lab: data
	@echo "Starting JupyterLab on $(FIRST_NOTEBOOK). On a server, open the http://127.0.0.1:8888/lab?token=... URL it prints (ssh -L 8888:localhost:8888 to reach it)."
	$(VENV)/bin/jupyter lab $(LAB_FLAGS) $(FIRST_NOTEBOOK)

# pytest exits 5 when it collected no test: that is reported, not treated as a failure. -rs prints why a test
# was skipped (the browser test without chromium). The website's browser test needs the built site (about 1.5
# minutes to build on 2 loaded cores): it is `make book-test`, not part of this target.
# Test files run in parallel, one process per core (pytest-xdist; a file and its notebook cells stay in one
# process, in order), each on one torch thread.
test: data chromium
	INDISTILL_QUICK=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q -rs --durations=15 -n auto --dist loadfile \
		--nbval-lax --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider --ignore=tests/test_book.py tests notebooks; \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc

# Run the notebooks in quick mode and store their outputs as static figures (readable without a kernel), each
# with a PNG of itself drawn by chromium (what GitHub shows):
#   make notebooks                       every notebook
#   make notebooks NOTEBOOKS="notebooks/07_indistill_end_to_end.ipynb"
# Finish stored notebooks without running them (seconds, not minutes): a PNG for every figure stored without
# one, solutions hidden, the installed kernelspec:
#   make finish NOTEBOOKS="notebooks/08_cascaded_teaching_assistants.ipynb"
#   (= python -m indistill_lab.viz.store --no-run notebooks/08_cascaded_teaching_assistants.ipynb)
NOTEBOOKS ?= $(wildcard notebooks/*.ipynb)
notebooks: data chromium
	INDISTILL_QUICK=1 $(PY) -m indistill_lab.viz.store $(NOTEBOOKS)

finish: setup chromium
	$(PY) -m indistill_lab.viz.store --no-run $(NOTEBOOKS)

clean-venv:
	rm -rf $(VENV)

# The course as a static website, from the stored notebooks (nothing executed): book/_build/html/index.html.
# Installs the `book` extra (Sphinx, MyST-NB) once; the sliders' states are computed from the zoo and the data.
$(VENV)/.book-installed: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[book]' $(TORCH_SPEC)
	touch $@

book: data $(VENV)/.book-installed
	$(PY) -m indistill_lab.viz.static_site

# The built site opened offline in chromium: every page, figure, slider and link (tests/test_book.py; about 40 s
# on a loaded 2-core machine after the build, so not part of `make test`).
book-test: book chromium
	$(PY) -m pytest -q -rs -p no:cacheprovider tests/test_book.py

# Every notebook through the real browser (make test runs a sample: see tests/test_browser.py).
browser-test: data chromium
	INDISTILL_QUICK=1 INDISTILL_BROWSER_NOTEBOOKS=all $(PY) -m pytest -q -rs -p no:cacheprovider tests/test_browser.py

# Every notebook's hidden exercise solutions, run after the notebook (make test runs notebook 00's: see
# tests/test_solutions.py).
solutions-test: data
	INDISTILL_QUICK=1 INDISTILL_SOLUTION_NOTEBOOKS=all $(PY) -m pytest -q -rs -p no:cacheprovider tests/test_solutions.py
