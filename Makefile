# Everything a fresh machine needs is installed from here: the Python venv, the
# pip packages, the MariaDB client headers that mysqlclient compiles against and,
# for the tests, mariadb-server.  Run as root or with sudo available.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT    := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get
LISTEN ?= 127.0.0.1:8080
URL    ?= http://127.0.0.1:8080
DATA   ?= ../shared/data/npm-packages.tsv

.PHONY: help install serve run test faults load schema mariadb faketime chromium screenshots bench clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z]+):.*## /  make \1\t/' | expand -t 16

install: $(STAMP)  ## the venv and every pip package (and the MariaDB client headers)

# mysqlclient builds against libmariadb (pkg-config finds it).
$(STAMP): requirements.txt pyproject.toml
	@pkg-config --exists libmariadb 2>/dev/null || \
	  { $(APT) update -q && $(APT) install -y -q libmariadb-dev pkg-config; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

# The test suite starts its own mariadbd processes; install the server once.
mariadb:
	@command -v mariadbd >/dev/null 2>&1 || test -x /usr/sbin/mariadbd || \
	  { $(APT) update -q && $(APT) install -y -q mariadb-server; }

# test_skew.py runs a web node and a sync pass with a fast clock (libfaketime).
faketime:
	@command -v faketime >/dev/null 2>&1 || \
	  { $(APT) update -q && $(APT) install -y -q faketime; }

# The production start command (README "Running in production"): granian,
# workers respawned when they die, /metrics summed over the workers.
WORKERS ?= 2
serve: $(STAMP)  ## serve on LISTEN with the production server (python -m kv.serve, granian, WORKERS=2)
	$(PY) -m kv.serve --workers $(WORKERS) $(LISTEN)

run: $(STAMP)  ## serve on 127.0.0.1:8080 (LISTEN=) with the development server (SQLite partitions)
	$(PY) controller.py $(LISTEN)

# test_pages.py drives the HTML pages in Debian's headless Chromium (through
# Playwright, which is told to use this browser and never downloads one).
chromium:
	@command -v chromium >/dev/null 2>&1 || \
	  { $(APT) update -q && $(APT) install -y -q chromium; }

# Retake docs/pages-*.png (the README's screenshots of the HTML pages).
screenshots: $(STAMP) mariadb chromium  ## retake the screenshots of the HTML pages (docs/pages-*.png)
	KV_SCREENSHOTS=1 $(PY) -m nose2 -v -s test test_pages

test: $(STAMP) mariadb faketime chromium  ## install everything and run the whole nose2 suite
	$(PY) -m nose2 -v -s test

# The long fault run (not in make test, whose test_faults.py is the short form):
# about 20 kill -9 of partitions and web workers under load, then sync and the
# history check; prints the figures. FAULTS_SECONDS and FAULTS_KILLS override.
FAULTS_SECONDS ?= 300
FAULTS_KILLS   ?= 20
faults: $(STAMP) mariadb  ## the long fault test: kill -9 under load, then check the history
	FAULTS_SECONDS=$(FAULTS_SECONDS) FAULTS_KILLS=$(FAULTS_KILLS) $(PY) -m nose2 -v -s test test_faults

# Create the schema on every partition of the configuration (idempotent).
schema: $(STAMP)  ## create or upgrade the schema on every configured partition
	$(PY) datastore.py schema

# Load every row of the npm data set into a running service, then verify it.
load: $(STAMP)  ## load the npm data set into the running service, then verify it
	$(VENV)/bin/kv load --url $(URL) --verify $(DATA)

# Side-by-side benchmark (not part of make test): the service, sysbench, etcd v2.
bench: $(STAMP) mariadb  ## the side-by-side benchmark (about 22 minutes)
	@command -v wrk >/dev/null && command -v sysbench >/dev/null && command -v etcd >/dev/null || \
	  { $(APT) update -q && $(APT) install -y -q wrk sysbench etcd-server; }
	$(PY) bench/bench.py

clean:  ## remove the venv and the SQLite data
	rm -rf $(VENV) data
