# sealdrop: common tasks. `make help` lists them.
#
# Every target is a command, not a file, so all are .PHONY. Override the
# cargo binary with `make CARGO=...`, the fuzzing time with `make fuzz
# FUZZ_SECS=300`.
#
# `make fuzz` reads the committed seeds in fuzz/corpus/<target> but writes
# the inputs it finds to target/fuzz-corpus/<target> (libFuzzer adds new
# inputs to the first corpus folder), so a run leaves the repository as it
# was. Crashes land in fuzz/artifacts/<target>/.

CARGO ?= cargo
FUZZ_SECS ?= 60
PYTHON ?= python3

ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
# The Python reference peer the interop tests run against (shared/ lies
# beside the repository); passed to the tests as SEALDROP_PEER.
PEER := $(abspath $(ROOT)/../shared/peer/sealdrop_peer.py)

.DEFAULT_GOAL := help
.PHONY: help demo test interop bench fuzz build release clean

help: ## List the targets
	@awk 'BEGIN { FS = ":.*## " } /^[a-z]+:.*## / { printf "  make %-8s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

demo: ## Build in release, run a server and two client uploads on loopback, check the results
	@bash $(ROOT)/scripts/demo.sh

test: ## Formatting check, clippy with warnings as errors, all tests
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace

interop: ## Tests against the Python reference peer (skipped if python3, pycryptodome or the peer is missing)
	@if ! command -v $(PYTHON) >/dev/null 2>&1; then \
		echo "interop: skipped: $(PYTHON) not found (install Python 3)"; exit 0; \
	elif ! $(PYTHON) -c 'import Crypto.Cipher.AES' >/dev/null 2>&1; then \
		echo "interop: skipped: pycryptodome not installed (python3 -m pip install pycryptodome)"; exit 0; \
	elif [ ! -f "$(PEER)" ]; then \
		echo "interop: skipped: reference peer not found at $(PEER)"; exit 0; \
	else \
		echo "SEALDROP_INTEROP=1 $(CARGO) test --workspace --test interop_peer --test interop_revisions"; \
		SEALDROP_INTEROP=1 SEALDROP_PEER="$(PEER)" $(CARGO) test --workspace --test interop_peer --test interop_revisions; \
	fi

bench: ## Protocol benchmarks, then the sealdrop-bench load test if bench/ exists
	$(CARGO) bench -p sealdrop-protocol
	@if [ -f "$(ROOT)/bench/Cargo.toml" ]; then \
		echo "$(CARGO) run --release -p sealdrop-bench"; \
		$(CARGO) run --release -p sealdrop-bench; \
	else \
		echo "bench: note: no bench/ crate in this checkout; skipped sealdrop-bench"; \
	fi

fuzz: ## Each cargo-fuzz target for FUZZ_SECS seconds (needs nightly and cargo-fuzz)
	@if ! $(CARGO) +nightly --version >/dev/null 2>&1; then \
		echo "fuzz: skipped: no nightly toolchain. Get one with: rustup toolchain install nightly"; exit 0; \
	elif ! $(CARGO) +nightly fuzz --version >/dev/null 2>&1; then \
		echo "fuzz: skipped: cargo-fuzz is missing. Get it with: $(CARGO) install cargo-fuzz"; exit 0; \
	elif [ ! -f "$(ROOT)/fuzz/Cargo.toml" ]; then \
		echo "fuzz: skipped: no fuzz/ crate in this checkout"; exit 0; \
	fi; \
	cd "$(ROOT)" && targets=$$($(CARGO) +nightly fuzz list) || exit 1; \
	[ -n "$$targets" ] || { echo "fuzz: no targets listed by cargo fuzz list"; exit 0; }; \
	for t in $$targets; do \
		echo "fuzz: $$t for $(FUZZ_SECS) s (new inputs in target/fuzz-corpus/$$t)"; \
		mkdir -p "target/fuzz-corpus/$$t" || exit 1; \
		seeds=""; [ -d "fuzz/corpus/$$t" ] && seeds="fuzz/corpus/$$t"; \
		$(CARGO) +nightly fuzz run "$$t" "target/fuzz-corpus/$$t" $$seeds \
			-- -max_total_time=$(FUZZ_SECS) || exit 1; \
	done

build: ## Debug build of the whole workspace
	$(CARGO) build --workspace

release: ## Release build of the whole workspace (binaries in target/release/)
	$(CARGO) build --workspace --release

clean: ## Remove build output (target/, and fuzz/target/ if present)
	$(CARGO) clean
	@if [ -d "$(ROOT)/fuzz/target" ]; then rm -rf "$(ROOT)/fuzz/target"; fi
