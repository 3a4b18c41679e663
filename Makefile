# Slidebank: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SLIDEBANK_HOME ?= $(CURDIR)/slidebank-data
HOST ?= 127.0.0.1
PORT ?= 8000
export SLIDEBANK_HOME

# Debian packages: wsidicom's JPEG codec loads libturbojpeg; python-magic (IIIF validator) loads
# libmagic; the browser tests drive Debian's Chromium; the DICOMweb tests and bench/dicomweb.py hold
# Slidebank against Orthanc with its DICOMweb plugin; npm fetches OpenSeadragon and Annotorious
# at build time.
SYSTEM_PACKAGES := libturbojpeg0 libmagic1 chromium orthanc orthanc-dicomweb ceph-mon ceph-osd radosgw
OSD_VENDOR := src/slidebank/web/static/vendor/openseadragon
ANNOTORIOUS_VENDOR := src/slidebank/web/static/vendor/annotorious
ANNOTORIOUS_DIST := web/node_modules/@annotorious/openseadragon/dist
DOCS_VENDOR := src/slidebank/web/static/vendor/docs

.PHONY: system-deps install web demo serve test bench bench-deps docs clean

system-deps:
	@missing=""; for package in $(SYSTEM_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$package 2>/dev/null | grep -q "ok installed" || missing="$$missing $$package"; \
	done; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		$$sudo apt-get update -qq && $$sudo apt-get install -y -qq $$missing; \
	fi

# OpenSeadragon and Annotorious from npm (pinned in web/package-lock.json), copied where the app
# serves them; dicom-microscopy-viewer and dicomweb-client (JS) stay in web/node_modules for the DICOMweb
# viewer test. Annotorious's UMD build bundles PixiJS and plugs into the OpenSeadragon global.
# Swagger UI and ReDoc for /docs and /redoc come from npm too, so the API pages load no script from a CDN;
# ReDoc's sidebar would still fetch Redocly's logo from theirs (the pages' CSP blocks it): an empty inline image instead.
$(OSD_VENDOR)/openseadragon.min.js $(ANNOTORIOUS_VENDOR)/annotorious-openseadragon.js $(DOCS_VENDOR)/swagger-ui-bundle.js &: web/package-lock.json | system-deps
	npm ci --prefix web --no-audit --no-fund
	rm -rf $(OSD_VENDOR) $(ANNOTORIOUS_VENDOR) $(DOCS_VENDOR) && mkdir -p $(ANNOTORIOUS_VENDOR) $(DOCS_VENDOR)
	cp -r web/node_modules/openseadragon/build/openseadragon $(OSD_VENDOR)
	cp $(ANNOTORIOUS_DIST)/annotorious-openseadragon.js $(ANNOTORIOUS_DIST)/annotorious-openseadragon.css $(ANNOTORIOUS_VENDOR)/
	cp web/node_modules/swagger-ui-dist/swagger-ui-bundle.js web/node_modules/swagger-ui-dist/swagger-ui.css \
		web/node_modules/redoc/bundles/redoc.standalone.js $(DOCS_VENDOR)/
	sed -i 's#https://cdn.redoc.ly/redoc/logo-mini.svg#data:image/svg+xml,%3Csvg xmlns=%27http://www.w3.org/2000/svg%27/%3E#' \
		$(DOCS_VENDOR)/redoc.standalone.js
	touch $(OSD_VENDOR)/openseadragon.min.js $(ANNOTORIOUS_VENDOR)/annotorious-openseadragon.js $(DOCS_VENDOR)/swagger-ui-bundle.js

web: $(OSD_VENDOR)/openseadragon.min.js $(ANNOTORIOUS_VENDOR)/annotorious-openseadragon.js $(DOCS_VENDOR)/swagger-ui-bundle.js

$(BIN)/slidebank: pyproject.toml | system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

# Flower (federated training) pins older FastAPI, Starlette, Typer and Rich than Slidebank, so it has
# its own virtualenv. That environment falls back on Slidebank's (a .pth adds its site-packages after
# its own): Flower's processes import slidebank.federated and torch from there without a second copy,
# and numpy is pinned to Slidebank's, which the compiled packages found that way were built against.
FLOWER_VENV ?= .venv-flower
FLOWER_VERSION := 1.42.0
$(FLOWER_VENV)/bin/flower-superlink: $(BIN)/slidebank
	test -x $(FLOWER_VENV)/bin/python || $(PYTHON) -m venv $(FLOWER_VENV)
	$(FLOWER_VENV)/bin/python -m pip install -q "flwr==$(FLOWER_VERSION)" \
		"numpy==$$($(BIN)/python -c 'import numpy; print(numpy.__version__)')"
	main=$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	own=$$($(FLOWER_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	echo "import site; site.addsitedir('$$main')" > $$own/zz-slidebank.pth
	$(FLOWER_VENV)/bin/python -c "import flwr, torch, slidebank.federated.client_app"
	touch $@

install: system-deps $(BIN)/slidebank $(FLOWER_VENV)/bin/flower-superlink web

demo: install
	$(BIN)/slidebank init
	$(BIN)/slidebank demo-data $(SLIDEBANK_HOME)/samples
	$(BIN)/slidebank datasets create human-oncology --exist-ok --duo DUO:0000004 \
		--policy "Synthetic demonstration slides: no restriction"
	$(BIN)/slidebank datasets create rat-toxicology --exist-ok --duo DUO:0000007 \
		--policy "Synthetic demonstration slides, controlled: disease-specific research, apply to the DAC"
	$(BIN)/slidebank ingest $(SLIDEBANK_HOME)/samples --metadata $(SLIDEBANK_HOME)/samples/metadata.csv --workers 2
	$(BIN)/slidebank run nuclei --dataset human-oncology --param max_tiles=12 --wait
	$(BIN)/slidebank slides list
	$(BIN)/slidebank serve --host $(HOST) --port $(PORT)

serve: install
	$(BIN)/slidebank serve --host $(HOST) --port $(PORT)

# The suite on SQLite, then what touches a node's database again on PostgreSQL (tests/databases.py).
test: install
	$(BIN)/python -m pytest -n 2 --durations=15
	SLIDEBANK_TEST_DATABASE=postgresql $(BIN)/python -m pytest -n 2 --durations=15

# The SDK's reference (slidebank.client, slidebank.patches) as HTML, from its docstrings.
docs: install
	$(BIN)/pdoc -o build/sdk-docs slidebank.client slidebank.patches
	@echo "SDK reference: build/sdk-docs/index.html"

# The benchmarks' peers: wrk and nginx from Debian, OpenSlide's Deep Zoom server and tiffslide from PyPI.
bench-deps: install
	sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; command -v wrk >/dev/null && command -v nginx >/dev/null \
		|| ($$sudo apt-get update -qq && $$sudo apt-get install -y -qq wrk nginx)
	$(BIN)/python -m pip install -q -e ".[test,bench]"

bench: bench-deps
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/tiles.py
	$(BIN)/python bench/regions.py
	$(BIN)/python bench/process.py
	$(BIN)/python bench/annotations.py
	$(BIN)/python bench/dicomweb.py
	$(BIN)/python bench/search.py

clean:
	rm -rf $(VENV) slidebank-data .pytest_cache web/node_modules $(OSD_VENDOR) $(ANNOTORIOUS_VENDOR) $(DOCS_VENDOR)
