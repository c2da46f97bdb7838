# The two commands a newcomer needs: `make serve` (the main job) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= ../shared/data
STAMP := $(VENV)/.installed

.PHONY: install serve test lint model browser clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch==2.13.0 first, on its own: it resolves to the CPU build that lies on local disk.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[train,dev,demo,ray,collect]'
	touch $(STAMP)

install: $(STAMP)

# In development the example gallery shows ../shared/data/examples (never committed); without it the
# gallery shows the photos this browser has classified.
EXAMPLES := $(wildcard $(SHARED)/examples)

serve: $(STAMP)
	$(BIN)/egr serve --host 127.0.0.1 --port 8000 $(if $(EXAMPLES),--examples $(EXAMPLES))

# Headless Chromium for the browser tests: Debian's package (a Playwright download fails offline).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

test: $(STAMP) browser
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# Re-train the shipped default model from ../shared/data, reproducibly (fixed seed, fixed split);
# its card (title, wording, data sources, failure modes) is cards/default.toml.
model: $(STAMP)
	$(BIN)/egr data import $(SHARED)/scraped $(SHARED)/examples $(SHARED)/other --out data/shared
	$(BIN)/egr train data/shared --out src/ethnic_group_recognizer/default_model --name default --card cards/default.toml
	$(BIN)/egr evaluate src/ethnic_group_recognizer/default_model data/shared --split val --out reports/default --update-model

clean-venv:
	rm -rf $(VENV)
