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

.PHONY: install run test faults load schema mariadb faketime bench clean

install: $(STAMP)

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

run: $(STAMP)
	$(PY) controller.py $(LISTEN)

test: $(STAMP) mariadb faketime
	$(PY) -m nose2 -v -s test

# The long fault run (not in make test, whose test_faults.py is the short form):
# about 20 kill -9 of partitions and web workers under load, then sync and the
# history check; prints the figures. FAULTS_SECONDS and FAULTS_KILLS override.
FAULTS_SECONDS ?= 300
FAULTS_KILLS   ?= 20
faults: $(STAMP) mariadb
	FAULTS_SECONDS=$(FAULTS_SECONDS) FAULTS_KILLS=$(FAULTS_KILLS) $(PY) -m nose2 -v -s test test_faults

# Create the schema on every partition of the configuration (idempotent).
schema: $(STAMP)
	$(PY) datastore.py schema

# Load every row of the npm data set into a running service, then verify it.
load: $(STAMP)
	$(VENV)/bin/kv load --url $(URL) --verify $(DATA)

# Side-by-side benchmark (not part of make test): the service, sysbench, etcd v2.
bench: $(STAMP) mariadb
	@command -v wrk >/dev/null && command -v sysbench >/dev/null && command -v etcd >/dev/null || \
	  { $(APT) update -q && $(APT) install -y -q wrk sysbench etcd-server; }
	$(PY) bench/bench.py

clean:
	rm -rf $(VENV) data
