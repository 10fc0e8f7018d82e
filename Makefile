# Two commands: `make demo` (set up + run the quick job on offline defaults), `make test` (set up + tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Data: the default dataset (cranfield) ships inside the package; set SMA_DATA_DIR for other BEIR folders.
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test lint clean browser reproduce

install: $(VENV)/.installed

# torch==2.13.0 first: it is the CPU build on this machine's disk; anything else pulls a CUDA build.
# constraints.txt pins the versions tested together (pip freeze of a working venv): no resolver backtracking.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,offline,export]"
	touch $@

demo: install
	$(BIN)/sma run --quick-test --experiment demo

# The report test opens report.html in headless Chromium (Debian's chromium + chromium-driver, as root, as CI runs);
# elsewhere that one test is skipped with its reason.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; } || \
	  echo "no chromium/chromedriver (not root): the browser test will be skipped"

test: install browser
	$(BIN)/pytest -q

# The results table (reference recipe at 30/50/70 %, 3 seeds) and the ablation around it, then their report,
# from scratch: 63 units of about 20 min each on 2 CPU cores at full settings (a day), fewer hours with GPUs.
reproduce: install
	$(BIN)/sma ablate --config cluster/ablation.yaml
	$(BIN)/sma report --experiment cranfield-ablation --page results/cranfield-ablation.md

lint: install
	$(BIN)/ruff check sma tune analysis tests

clean:
	rm -rf $(VENV) results .pytest_cache
