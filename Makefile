# poolfs: build, test and demo. Everything here runs as root on Debian 12
# (see README.md); `make test` is what CI runs (.ci/run).

SHELL := /bin/bash
GO ?= go
MODULE := github.com/poolfs/poolfs

# Packages tested with the race detector; everything else (test/e2e, cmd,
# test/fixture, ...) is tested without it.
RACE_PKGS_RE := ^$(MODULE)/(remote|cache|layer|fs|pool|alsfs|profilestore|imagestore|control|metrics)(/|$$)
RACE_TIMEOUT ?= 15m
# Integration tests also run under the race detector: only the concurrency
# ones, as the whole package takes minutes with -race.
RACE_INTEGRATION := ^(TestManyReadersManyLayers|TestTreesComeAndGoUnderReads)$$
TEST_TIMEOUT ?= 20m
# The tree memory measurements skip under the race detector (its
# bookkeeping skews the heap); they run here without it.
NORACE_LAYER := ^TestTreeBytes
# Extra flags for go test, e.g. make test GOTEST_FLAGS=-v
GOTEST_FLAGS ?=

.PHONY: all build deps test fuzz demo bench clean

all: build

build:
	$(GO) build -o bin/poolfs ./cmd/poolfs

# install-podman5.sh builds podman 5.4.2 for the TOC-digest e2e test (cached
# outside the checkout; minutes the first time on a machine, then instant).
deps:
	bash scripts/install-deps.sh
	bash scripts/install-podman5.sh >/dev/null

# Both go test runs happen even if the first fails; the target fails if
# either did.
test: deps
	$(GO) vet ./...
	@set -e; \
	pkgs=$$($(GO) list ./...); \
	race=$$(printf '%s\n' $$pkgs | grep -E '$(RACE_PKGS_RE)' || true); \
	rest=$$(printf '%s\n' $$pkgs | grep -vE '$(RACE_PKGS_RE)' || true); \
	status=0; \
	if [ -n "$$race" ]; then \
		echo "== go test -race $$(echo $$race | tr '\n' ' ')"; \
		$(GO) test -race -count=1 -timeout $(RACE_TIMEOUT) $(GOTEST_FLAGS) $$race || status=1; \
	fi; \
	if [ -n "$$rest" ]; then \
		echo "== go test $$(echo $$rest | tr '\n' ' ')"; \
		$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(GOTEST_FLAGS) $$rest || status=1; \
	fi; \
	echo "== go test -run '$(NORACE_LAYER)' ./layer"; \
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(GOTEST_FLAGS) -run '$(NORACE_LAYER)' ./layer || status=1; \
	echo "== go test -race -run '$(RACE_INTEGRATION)' ./test/integration"; \
	$(GO) test -race -count=1 -timeout $(RACE_TIMEOUT) $(GOTEST_FLAGS) -run '$(RACE_INTEGRATION)' ./test/integration || status=1; \
	$(MAKE) --no-print-directory fuzz || status=1; \
	exit $$status

# Each fuzz target runs briefly from its seed corpus (and the corpus go test
# keeps in its cache). The budgets are execution counts, each about 10 s
# here: a wall-clock -fuzztime races Go's fuzz coordinator at the deadline
# (go.dev/issue/75804, unfixed in go1.26) and fails with a bare "context
# deadline exceeded" and no crasher. FUZZTIME=5m make fuzz for a longer hunt.
FUZZTIME ?=
FUZZ_TARGETS := alspath:FuzzParseElement:100000x layer:FuzzOpen:20000x \
	layer:FuzzOpenStored:12000x layer:FuzzDecodeTOCMatchesEncodingJSON:50000x \
	layer:FuzzZstdChunkedTOC:20000x layer:FuzzReplay:5000x
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; rest=$${t#*:}; fn=$${rest%%:*}; budget=$${rest#*:}; \
		budget=$${FUZZTIME:-$$budget}; \
		echo "== go test -fuzz=$$fn -fuzztime=$$budget ./$$pkg"; \
		$(GO) test -run='^$$' -fuzz="^$$fn\$$" -fuzztime=$$budget ./$$pkg; \
	done

demo: deps build
	$(GO) run ./test/demo -poolfs bin/poolfs

# Not part of test: builds Debian images with debootstrap (cached in
# .work/bench), runs podman cold many times and writes docs/benchmarks.md
# (about 7 minutes once the images are cached, longer the first time;
# BENCH_FLAGS=-quick for a short run).
BENCH_FLAGS ?=
bench: deps build
	bash scripts/install-bench-deps.sh
	$(GO) run ./test/bench -poolfs bin/poolfs $(BENCH_FLAGS)

clean:
	rm -rf bin/
