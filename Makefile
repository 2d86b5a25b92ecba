# gpublocks — see README.md. `make demo` and `make test` are the two entry points.
GO       ?= go
BIN      ?= bin/gpublocks
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# go-nvml is cgo; its header marks many functions deprecated, which only adds noise.
export CGO_ENABLED := 1
export CGO_CFLAGS  ?= -O2 -g -Wno-deprecated-declarations
GOLANGCI_LINT_VERSION ?= v2.15.0

.PHONY: all build demo test test-unit test-deployments e2e stress lint bench clean

all: build

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/gpublocks

## demo: serve simulated GPUs to a built-in kubelet stand-in and show what example containers receive
demo: build
	./$(BIN) demo

## test: unit tests (-race), manifests and Helm chart, and the kubelet end-to-end suite
test: test-unit test-deployments e2e

test-unit:
	$(GO) test -race -count=1 ./...

## test-deployments: renders the Helm chart with Helm's Go SDK, decodes every
## manifest strictly into k8s.io/api types, parses every example config
## (deployments/ is its own module so the product never depends on Helm)
test-deployments: build
	cd deployments && GPUBLOCKS_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 ./...

## e2e: drives the real binary (built with -race) through the kubelet's own
## device-manager code; tests/ is its own module so the product never depends
## on k8s.io/kubernetes. The kubelet-linked test binary itself is built without
## -race: that would build the kubelet twice for no product coverage.
e2e:
	cd tests && GPUBLOCKS_E2E_RACE=1 $(GO) test -count=1 -timeout 20m ./...

## stress: every unit test of the main module and of deployments/, 20 times
## under -race, to catch flakes (not part of `make test`: it takes long).
## The tests/ e2e module is left out: it needs root and the kubelet lock, and
## one pass of it is already minutes long.
STRESS_COUNT ?= 20
stress: build
	$(GO) test -race -count=$(STRESS_COUNT) -timeout 60m ./...
	cd deployments && GPUBLOCKS_BIN=$(CURDIR)/$(BIN) $(GO) test -race -count=$(STRESS_COUNT) -timeout 60m ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	cd tests && $(GO) vet ./...
	cd deployments && $(GO) vet ./...
	@command -v golangci-lint >/dev/null || $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	PATH="$$PATH:$$($(GO) env GOPATH)/bin" golangci-lint run ./...
	cd tests && PATH="$$PATH:$$($(GO) env GOPATH)/bin" golangci-lint run ./...
	cd deployments && PATH="$$PATH:$$($(GO) env GOPATH)/bin" golangci-lint run ./...

## bench: Allocate vs empty gRPC round trip, GetPreferredAllocation, blocks packing, XID latency, RSS at ready
bench: build
	$(GO) test -run '^$$' -bench . -benchtime 2s ./plugin/ ./blocks/
	$(GO) test -run '^$$' -bench XIDToListAndWatch -benchtime 300x ./daemon/
	GPUBLOCKS_BIN=$(CURDIR)/$(BIN) $(GO) test -run '^$$' -bench RSS -benchtime 1x ./daemon/

clean:
	rm -rf bin
