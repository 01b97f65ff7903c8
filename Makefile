# Two commands do everything on a fresh machine:
#   make run    install, start local Kafka + PostgreSQL, start a worker, feed the bundled real sample
#   make test   install, start local Kafka + PostgreSQL, run every test
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
BIN := $(VENV)/bin
LOCAL := .local
SPEED ?= 5
BAR_SECONDS ?= 1
# Three agents vote on the bundled trades (rules, order flow, whales); a decision needs two.
CONSENSUS_MIN_AGENTS ?= 2
WEB_PORT ?= 6066
SAMPLE ?= data/sample/binance_usdm_trades_20240808.csv.gz
PYTEST_ARGS ?=
WORKER_PID := $(LOCAL)/worker.pid
WORKER_LOG := $(LOCAL)/logs/worker.log

.PHONY: help install system-deps up down run worker stop feed test unit bench status clean

help:
	@echo "make run      install, start Kafka + PostgreSQL, start a worker, feed the real sample (SPEED=$(SPEED))"
	@echo "make test     install, start Kafka + PostgreSQL, run pytest (unit, agent and integration tests)"
	@echo "make up/down  start/stop the local Kafka broker and PostgreSQL server (and the worker)"
	@echo "make stop     stop the worker started by make run"
	@echo "make bench    whole-path, risk, signal, ingest, store, dashboard and backtest benchmarks (bench/*.py)"

$(BIN)/.installed: pyproject.toml
	@py=$$(scripts/find-python.sh) && echo "using $$py" && \
	  { [ -x $(BIN)/python ] || "$$py" -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	@touch $@

install: $(BIN)/.installed

up:
	@scripts/services.sh up

status:
	@scripts/services.sh status

down: stop
	@scripts/services.sh down

worker: install up
	@mkdir -p $(LOCAL)/logs
	@if [ -f $(WORKER_PID) ] && kill -0 $$(cat $(WORKER_PID)) 2>/dev/null; then \
	  echo "worker already running (pid $$(cat $(WORKER_PID)))"; \
	else \
	  BAR_SECONDS=$(BAR_SECONDS) CONSENSUS_MIN_AGENTS=$(CONSENSUS_MIN_AGENTS) WEB_PORT=$(WEB_PORT) setsid nohup $(BIN)/faust -A app worker -l info \
	    >$(WORKER_LOG) 2>&1 </dev/null & echo $$! >$(WORKER_PID); \
	  echo "worker starting (pid $$(cat $(WORKER_PID)), log $(WORKER_LOG))"; \
	fi
	@for i in $$(seq 1 240); do \
	  curl -sf http://127.0.0.1:$(WEB_PORT)/health/ >/dev/null && break; \
	  kill -0 $$(cat $(WORKER_PID)) 2>/dev/null || { echo "worker exited; see $(WORKER_LOG)"; tail -n 30 $(WORKER_LOG); exit 1; }; \
	  sleep 0.5; \
	done; curl -sf http://127.0.0.1:$(WEB_PORT)/health/ >/dev/null || { echo "worker not healthy; see $(WORKER_LOG)"; exit 1; }
	@echo "worker ready on http://127.0.0.1:$(WEB_PORT)/"

feed: install
	BAR_SECONDS=$(BAR_SECONDS) $(BIN)/faust -A app feed $(SAMPLE) --speed $(SPEED)

run: worker feed
	@sleep 2
	@echo
	@echo "Real Binance USD-M trades (BTC, ETH, 2024-08-08) went through the agents. Look at:"
	@echo "  dashboard   http://127.0.0.1:$(WEB_PORT)/dashboard/"
	@echo "  portfolio   http://127.0.0.1:$(WEB_PORT)/portfolio/"
	@echo "  health      http://127.0.0.1:$(WEB_PORT)/health/"
	@echo "  metrics     http://127.0.0.1:$(WEB_PORT)/metrics/"
	@echo "  events      psql -h 127.0.0.1 -p 55432 -U postgres moondev -c 'select event_type, count(*) from events group by 1'"
	@echo "  worker log  $(WORKER_LOG)"
	@echo "The worker keeps running; 'make stop' stops it, 'make down' stops everything."
	@curl -s http://127.0.0.1:$(WEB_PORT)/portfolio/ | $(BIN)/python -m json.tool | head -40

stop:
	@if [ -f $(WORKER_PID) ]; then \
	  pid=$$(cat $(WORKER_PID)); \
	  if kill -0 $$pid 2>/dev/null; then kill $$pid; for i in $$(seq 1 100); do kill -0 $$pid 2>/dev/null || break; sleep 0.2; done; \
	    kill -9 $$pid 2>/dev/null || true; echo "worker stopped"; fi; \
	  rm -f $(WORKER_PID); \
	fi

test: install system-deps up
	$(BIN)/python -m pytest $(PYTEST_ARGS)

system-deps:
	@scripts/system-deps.sh

unit: install
	$(BIN)/python -m pytest tests/unit tests/agents tests/adapters $(PYTEST_ARGS)

bench: install up
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/risk.py
	$(BIN)/python bench/signals.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/store.py
	$(BIN)/python bench/dashboard.py
	$(BIN)/python bench/backtest.py

clean: down
	rm -rf $(LOCAL)/faust-data $(LOCAL)/bench
