# obsbus developer tasks. `make test` is the test command (CI runs it via .ci/run).
PYTHON ?= python3
VENV := .venv
PYTEST_ARGS ?=

REPO ?= repo
EXPOSURES ?= 2
INTERVAL ?= 2

.PHONY: venv postgres kafka browser run test lint clean-db clean-kafka

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install -e '.[test]'
	touch $@

# The main job on the embedded default (SQLite + datastore in $(REPO), the local broker): the
# four services start, a simulated SimCam night of $(EXPOSURES) exposures lands in
# $(REPO)/landing every $(INTERVAL) s and is ingested; everything stops once every file has its
# outcome. (`obsbus up $(REPO)` alone keeps running until Ctrl-C.)
run: venv
	$(VENV)/bin/obsbus up $(REPO) --simulate $(EXPOSURES) --interval $(INTERVAL) --exit-when-done
	$(VENV)/bin/obsbus query-dimension-records $(REPO) exposure

# Local PostgreSQL on 127.0.0.1 (data in var/postgres/); idempotent.
postgres:
	bash deploy/postgres.sh start

# Local single-node Kafka (KRaft) on 127.0.0.1:19092 (jars in deploy/kafka/lib/, data in
# var/kafka/); idempotent. The first start fetches the broker with Maven (~45 MB, once).
kafka:
	bash deploy/kafka.sh start

# Headless Chromium and chromedriver for the dashboard's browser test (Debian packages
# chromium, chromium-driver); idempotent.
browser:
	bash deploy/browser.sh

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# pytest exits non-zero (5) when no tests are collected: that fails the target.
test: venv postgres kafka browser lint
	url=$$(bash deploy/postgres.sh url) && kafka=$$(bash deploy/kafka.sh bootstrap) && \
	OBSBUS_TEST_POSTGRES_URL="$$url" OBSBUS_TEST_KAFKA="$$kafka" \
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean-db:
	bash deploy/postgres.sh stop
	rm -rf var/postgres

clean-kafka:
	bash deploy/kafka.sh stop
	rm -rf var/kafka
