# rexec — build, test and benchmark. `make test` is the one command that runs
# every test on a fresh machine: it builds the pinned Consul agent once
# (bin/consul, a few minutes) and the tests start their own PostgreSQL and
# Consul cluster.

GO ?= go

.PHONY: all build consul test check bench bench-smoke clean

all: build

build:
	$(GO) build -o bin/ ./cmd/...

# The Consul agent used by the tests, dev mode and the parity benchmarks,
# built from the separate tools/consul module so that Consul's dependencies
# stay out of go.mod.
consul: bin/consul
bin/consul:
	cd tools/consul && $(GO) build -o ../../bin/consul.tmp github.com/hashicorp/consul
	mv bin/consul.tmp bin/consul

check:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt needed'; exit 1; }
	$(GO) vet ./...
	$(GO) mod tidy -diff

test: bin/consul check
	$(GO) test -count=1 -timeout 30m ./...

# Benchmarks with the figures quoted in the README.
bench: bin/consul
	$(GO) test -run '^$$' -bench . -benchtime 10x ./...

# One iteration of every benchmark, so that CI keeps them working.
bench-smoke: bin/consul
	$(GO) test -run '^$$' -bench . -benchtime 1x ./...

clean:
	rm -rf bin
