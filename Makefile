# Slidebank: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SLIDEBANK_HOME ?= $(CURDIR)/slidebank-data
HOST ?= 127.0.0.1
PORT ?= 8000
export SLIDEBANK_HOME

# System libraries that Python packages load at run time (wsidicom's JPEG codec needs libturbojpeg).
SYSTEM_PACKAGES := libturbojpeg0

.PHONY: system-deps install demo serve test bench clean

system-deps:
	@if ! ldconfig -p | grep -q libturbojpeg.so.0; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $(SYSTEM_PACKAGES); \
		else sudo apt-get update -qq && sudo apt-get install -y -qq $(SYSTEM_PACKAGES); fi; \
	fi

$(BIN)/slidebank: pyproject.toml | system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: system-deps $(BIN)/slidebank

demo: install
	$(BIN)/slidebank init
	$(BIN)/slidebank demo-data $(SLIDEBANK_HOME)/samples
	$(BIN)/slidebank ingest $(SLIDEBANK_HOME)/samples --metadata $(SLIDEBANK_HOME)/samples/metadata.csv --workers 2
	$(BIN)/slidebank slides list
	$(BIN)/slidebank serve --host $(HOST) --port $(PORT)

serve: install
	$(BIN)/slidebank serve --host $(HOST) --port $(PORT)

test: install
	$(BIN)/python -m pytest -n 2 --durations=15

bench: install
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) slidebank-data .pytest_cache
