# poolfs: build, test and demo. Everything here runs as root on Debian 12
# (see README.md); `make test` is what CI runs (.ci/run).

SHELL := /bin/bash
GO ?= go
MODULE := github.com/poolfs/poolfs

# Packages tested with the race detector; everything else (test/e2e, cmd,
# test/fixture, ...) is tested without it.
RACE_PKGS_RE := ^$(MODULE)/(remote|cache|layer|fs|pool)(/|$$)
RACE_TIMEOUT ?= 15m
TEST_TIMEOUT ?= 20m
# Extra flags for go test, e.g. make test GOTEST_FLAGS=-v
GOTEST_FLAGS ?=

.PHONY: all build deps test demo clean

all: build

build:
	$(GO) build -o bin/poolfs ./cmd/poolfs

deps:
	bash scripts/install-deps.sh

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
	exit $$status

demo: deps build
	$(GO) run ./test/demo -poolfs bin/poolfs

clean:
	rm -rf bin/
