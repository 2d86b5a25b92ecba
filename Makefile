# gpublocks — see README.md. `make demo` and `make test` are the two entry points.
GO       ?= go
BIN      ?= bin/gpublocks
BIN_DRA  ?= bin/gpublocks-dra
VERSION_VAR := github.com/gpublocks/gpublocks/internal/cli.version
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# go-nvml is cgo; its header marks many functions deprecated, which only adds noise.
export CGO_ENABLED := 1
export CGO_CFLAGS  ?= -O2 -g -Wno-deprecated-declarations
GOLANGCI_LINT_VERSION ?= v2.15.0
# make image: the OCI archive's inputs (same inputs, same digest).
IMAGE             ?= bin/gpublocks-image.tar
REVISION          ?= $(shell git rev-parse HEAD 2>/dev/null)
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)

.PHONY: all build image demo test test-unit test-deployments e2e test-cluster lint bench stress clean

all: build

## build: bin/gpublocks (device plugin and tools) and bin/gpublocks-dra (the same plus DRA
## mode, which links client-go; `gpublocks serve --kubelet-api dra` runs it)
build:
	$(GO) build -trimpath -ldflags "-s -w -X $(VERSION_VAR)=$(VERSION)" -o $(BIN) ./cmd/gpublocks
	$(GO) build -trimpath -ldflags "-s -w -X $(VERSION_VAR)=$(VERSION)" -o $(BIN_DRA) ./cmd/gpublocks-dra

## image: $(IMAGE), an OCI image archive of the binary and the glibc runtime
## it needs (Debian packages fetched and verified by apt), without a container
## engine; its reference is the chart's image.repository:appVersion.
## `ctr -n k8s.io images import $(IMAGE)` loads it (README "Image").
image: build
	cd deployments && env -u GOARCH -u CC $(GO) run ./cmd/gpublocks-image -binary $(CURDIR)/$(BIN) -dra-binary $(CURDIR)/$(BIN_DRA) \
		-license $(CURDIR)/LICENSE -chart helm/gpublocks -output $(CURDIR)/$(IMAGE) \
		-cache $(CURDIR)/bin/debs -revision "$(REVISION)" -created "$(SOURCE_DATE_EPOCH)"

## demo: serve simulated GPUs to a built-in kubelet stand-in and show what example containers receive
demo: build
	./$(BIN) demo

## test: unit tests (-race), manifests and Helm chart, the kubelet end-to-end suite
## and the real-cluster suite
test: test-unit test-deployments e2e test-cluster

test-unit:
	$(GO) test -race -count=1 ./...

## test-deployments: renders the Helm chart with Helm's Go SDK, decodes every
## manifest strictly into k8s.io/api types, parses every example config
## (deployments/ is its own module so the product never depends on Helm)
test-deployments: build image
	cd deployments && GPUBLOCKS_BIN=$(CURDIR)/$(BIN) GPUBLOCKS_IMAGE=$(CURDIR)/$(IMAGE) $(GO) test -count=1 ./...

## e2e: drives the real binary (built with -race) through the kubelet's own
## device-manager code; tests/ is its own module so the product never depends
## on k8s.io/kubernetes. The kubelet-linked test binary itself is built without
## -race: that would build the kubelet twice for no product coverage.
e2e:
	cd tests && GPUBLOCKS_E2E_RACE=1 $(GO) test -count=1 -timeout 20m ./...

## test-cluster: a real single-node cluster built from source (etcd, the control
## plane and a kubelet v1.37, containerd 2.4; built once into
## ~/.cache/gpublocks-cluster), the image imported and the Helm chart installed on
## simulated GPUs, pods run by containerd. Needs root, runc, containernetworking-plugins
## and busybox-static (it skips, saying so, without them). tests/cluster is its own
## module. The timeout covers a cold build of the components (10-20 min on 2 cores).
test-cluster: image
	cd tests/cluster && GPUBLOCKS_IMAGE=$(abspath $(IMAGE)) $(GO) test -count=1 -v -timeout 75m ./...

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
	cd tests/cluster && $(GO) vet ./...
	@command -v golangci-lint >/dev/null || $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	PATH="$$PATH:$$($(GO) env GOPATH)/bin" golangci-lint run ./...
	cd tests && PATH="$$PATH:$$($(GO) env GOPATH)/bin" golangci-lint run ./...
	cd deployments && PATH="$$PATH:$$($(GO) env GOPATH)/bin" golangci-lint run ./...
	cd tests/cluster && PATH="$$PATH:$$($(GO) env GOPATH)/bin" golangci-lint run ./...

## bench: Allocate vs empty gRPC round trip, GetPreferredAllocation, blocks packing, XID latency,
## cluster packing (DRA through the scheduler's allocator vs the device-plugin model, 100 nodes),
## and start-up time and RSS side by side with NVIDIA's plugin (tests/footprint, its own module;
## set NVIDIA_DEVICE_PLUGIN_SRC to a checkout of NVIDIA/k8s-device-plugin v0.20.0 with vendor/,
## else gpublocks alone is measured against the reference figures)
NVIDIA_DEVICE_PLUGIN_SRC ?=
bench: build
	$(GO) test -run '^$$' -bench . -benchtime 2s ./plugin/ ./blocks/
	$(GO) test -run '^$$' -bench XIDToListAndWatch -benchtime 300x ./daemon/
	$(GO) test -run '^$$' -bench XIDToTaint -benchtime 100x ./daemon/
	$(GO) test -run '^$$' -bench Prepare -benchtime 300x ./draplugin/
	$(GO) test -run '^$$' -bench ClusterPacking -benchtime 1x -timeout 30m -v ./dra/
	@if (cd tests/footprint && $(GO) test -c -o $(CURDIR)/bin/footprint.test .); then \
		cd tests/footprint && GPUBLOCKS_BIN=$(CURDIR)/$(BIN) NVIDIA_DEVICE_PLUGIN_SRC=$(NVIDIA_DEVICE_PLUGIN_SRC) \
			$(CURDIR)/bin/footprint.test -test.run '^$$' -test.bench Footprint -test.benchtime 1x; \
	else \
		echo "SKIP footprint side-by-side: tests/footprint did not build (it needs k8s.io/kubernetes from the module proxy); gpublocks alone:"; \
		GPUBLOCKS_BIN=$(CURDIR)/$(BIN) $(GO) test -run '^$$' -bench RSS -benchtime 1x ./daemon/; \
	fi

clean:
	rm -rf bin
