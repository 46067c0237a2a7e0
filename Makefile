# Two entry points (see README "Quick start"):
#   make run   - set up .venv, run the default search on the embedded digits baseline (and the paper's
#                walk beside it, in one line), then export the confirmed delivery fine-tuned
#   make test  - set up .venv and the test services (PostgreSQL, Chromium) and run the test suite
PY ?= python3
# OpenMP's default busy-waiting makes torch processes that share few cores 10-40x slower.
export OMP_WAIT_POLICY ?= PASSIVE
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test setup services clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[test,postgres]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/primesvt search studies/digits.toml --storage sqlite:///runs/digits.db --study-name digits-demo --resume --compare-walk
	$(BIN)/primesvt export sqlite:///runs/digits.db --study-name digits-demo --output runs/digits-pruned.pt --finetune-epochs 3 --force

services: $(STAMP)
	bash scripts/services.sh

test: $(STAMP) services
	. scripts/services.env 2>/dev/null; $(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) runs .pytest_cache
