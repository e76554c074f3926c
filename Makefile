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

# `make install`: where things go. DESTDIR is prepended to every path (a
# staging tree for a package); PREFIX is where they will live. Each
# directory can be overridden on its own (UNITDIR=/lib/systemd/system for
# a distribution that keeps units there).
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
DATADIR ?= $(PREFIX)/share
MANDIR ?= $(DATADIR)/man
UNITDIR ?= $(PREFIX)/lib/systemd/system
BASHCOMPDIR ?= $(DATADIR)/bash-completion/completions
ZSHCOMPDIR ?= $(DATADIR)/zsh/site-functions
FISHCOMPDIR ?= $(DATADIR)/fish/vendor_completions.d
INSTALL ?= install
# Where the binaries are taken from: `make release` builds them there.
# `make install` never builds (it often runs as root, without cargo).
BUILD_DIR ?= $(or $(CARGO_TARGET_DIR),$(ROOT)/target)/release
# The binaries installed.
PROGRAMS := sealdrop-server sealdrop-client
# The binaries that print their own shell completions
# (`PROGRAM --print-completions bash|zsh|fish`) and man page
# (`PROGRAM --print-man`), each with its man section. To add one, list
# it here and set its MAN_SECTION_<program>.
GENERATED := sealdrop-server sealdrop-client
MAN_SECTION_sealdrop-server := 8
MAN_SECTION_sealdrop-client := 1
# Of those, the binaries with subcommands: besides their own page they
# have one per subcommand, which their page refers to
# (sealdrop-server-clients(8) ...); `PROGRAM --write-man-pages DIR`
# writes them all into DIR.
MAN_PAGES := sealdrop-server

.DEFAULT_GOAL := help
.PHONY: help demo test interop bench fuzz build release install clean

help: ## List the targets
	@awk 'BEGIN { FS = ":.*## " } /^[a-z]+:.*## / { printf "  make %-8s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

demo: ## Build in release, run a server and two client uploads on loopback, check the results
	@bash $(ROOT)/scripts/demo.sh

test: ## Formatting check, clippy and rustdoc with warnings as errors, all tests
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --quiet
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

install: ## Install the release binaries, systemd units, completions and man pages (PREFIX, DESTDIR; run make release first)
	@set -e; \
	for p in $(PROGRAMS); do \
		if [ ! -x "$(BUILD_DIR)/$$p" ]; then \
			echo "install: $(BUILD_DIR)/$$p not found: run 'make release' first (or set BUILD_DIR)" >&2; \
			exit 1; \
		fi; \
	done; \
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	echo "install: binaries to $(DESTDIR)$(BINDIR)"; \
	$(INSTALL) -d "$(DESTDIR)$(BINDIR)"; \
	for p in $(PROGRAMS); do \
		$(INSTALL) -m 0755 "$(BUILD_DIR)/$$p" "$(DESTDIR)$(BINDIR)/$$p"; \
	done; \
	echo "install: systemd units to $(DESTDIR)$(UNITDIR) (ExecStart in $(BINDIR))"; \
	$(INSTALL) -d "$(DESTDIR)$(UNITDIR)"; \
	for u in "$(ROOT)"/server/systemd/*.service "$(ROOT)"/server/systemd/*.socket; do \
		sed 's|/usr/local/bin/|$(BINDIR)/|g' "$$u" > "$$tmp/unit"; \
		$(INSTALL) -m 0644 "$$tmp/unit" "$(DESTDIR)$(UNITDIR)/$${u##*/}"; \
	done; \
	echo "install: completions and man pages of $(GENERATED) under $(DESTDIR)$(DATADIR)"; \
	$(INSTALL) -d "$(DESTDIR)$(BASHCOMPDIR)" "$(DESTDIR)$(ZSHCOMPDIR)" "$(DESTDIR)$(FISHCOMPDIR)"; \
	for p in $(GENERATED); do \
		"$(BUILD_DIR)/$$p" --print-completions bash > "$$tmp/bash"; \
		"$(BUILD_DIR)/$$p" --print-completions zsh > "$$tmp/zsh"; \
		"$(BUILD_DIR)/$$p" --print-completions fish > "$$tmp/fish"; \
		$(INSTALL) -m 0644 "$$tmp/bash" "$(DESTDIR)$(BASHCOMPDIR)/$$p"; \
		$(INSTALL) -m 0644 "$$tmp/zsh" "$(DESTDIR)$(ZSHCOMPDIR)/_$$p"; \
		$(INSTALL) -m 0644 "$$tmp/fish" "$(DESTDIR)$(FISHCOMPDIR)/$$p.fish"; \
	done; \
	$(foreach p,$(GENERATED),\
		rm -rf "$$tmp/man"; mkdir "$$tmp/man"; \
		$(if $(filter $(p),$(MAN_PAGES)),\
			"$(BUILD_DIR)/$(p)" --write-man-pages "$$tmp/man" > /dev/null;,\
			"$(BUILD_DIR)/$(p)" --print-man > "$$tmp/man/$(p).$(MAN_SECTION_$(p))";) \
		$(INSTALL) -d "$(DESTDIR)$(MANDIR)/man$(MAN_SECTION_$(p))"; \
		$(INSTALL) -m 0644 "$$tmp/man"/* "$(DESTDIR)$(MANDIR)/man$(MAN_SECTION_$(p))/";) \
	echo "install: done"

clean: ## Remove build output (target/, and fuzz/target/ if present)
	$(CARGO) clean
	@if [ -d "$(ROOT)/fuzz/target" ]; then rm -rf "$(ROOT)/fuzz/target"; fi
