# `make demo` sets everything up and runs the main job on the built-in synthetic demo data;
# `make test` runs the linter and the test suite.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DATA := data/demo
RUN := runs/demo-card

.PHONY: demo test lint setup clean-demo

$(VENV)/installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

setup: $(VENV)/installed

$(DEMO_DATA)/.complete: $(VENV)/installed brain_vqvae/data/demo.py
	$(PY) dataset.py demo --out $(DEMO_DATA) --overwrite
	touch $@

# Training resumes from the last checkpoint when a previous `make demo` was interrupted.
$(RUN)/metrics.json: $(DEMO_DATA)/.complete
	if [ -f $(RUN)/hyperparameters.json ]; then \
		$(PY) train.py --data $(DEMO_DATA) --out $(RUN) --resume; \
	else \
		$(PY) train.py --data $(DEMO_DATA) --out $(RUN); \
	fi

demo: $(RUN)/metrics.json
	$(PY) predict.py --run $(RUN) --num 16 --overwrite
	$(PY) predict.py --run $(RUN) --reconstruct --num 8 --overwrite
	$(PY) similarity.py --run $(RUN)
	$(PY) latent.py --run $(RUN) --overwrite
	@echo "Everything is in $(RUN)/: samples/, reconstructions/, similarity_test/, latent/"

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest -q tests

clean-demo:
	rm -rf $(DEMO_DATA) $(RUN)
