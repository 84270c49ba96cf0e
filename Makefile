# op-dbus: the one entry point. `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
# Where `make run` keeps its state: the system path as root, else a local folder.
STATE_DIR ?= $(if $(filter 0,$(shell id -u)),/var/lib/op-dbus,$(CURDIR)/state)
METRICS ?= 127.0.0.1:9464

.PHONY: help run build test lint fmt bench bench-criterion bench-load clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

build: ## build the release binary
	$(CARGO) build --release --locked

run: build ## run the daemon (state in $(STATE_DIR), metrics on $(METRICS)); Ctrl-C drains and stops
	./target/release/op-dbus --state-dir $(STATE_DIR) run --metrics-listen $(METRICS)

test: ## run every test (unit, integration, property)
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --locked --no-fail-fast; \
	else \
		$(CARGO) test --locked --no-fail-fast; \
	fi

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

bench: bench-criterion bench-load ## run every benchmark (see BENCHMARKS.md)

bench-criterion: ## criterion micro-benchmarks: codec and LMDB vs SQLite
	$(CARGO) bench --locked --bench codec --bench index

bench-load: ## end-to-end import, verify and latency against their peers (LOAD_N=1000000)
	$(CARGO) bench --locked --bench load

clean: ## remove build output and the local state folder
	$(CARGO) clean
	rm -rf $(CURDIR)/state
