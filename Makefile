# cs-journal-bouncer — the targets people expect. Kernel and LAPI tests need
# root: they run each test in its own network namespace and never touch the
# host's firewall.
export PATH := $(PATH):/usr/local/go/bin
GO      ?= go
BIN     := bin/cs-journal-bouncer
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: all build deb deps test test-unit lint bench demo fuzz clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/cs-journal-bouncer

# dist/cs-journal-bouncer_<version>_<arch>.deb, built with dpkg-deb.
deb:
	@bash scripts/build-deb.sh $(VERSION)

deps:
	@bash scripts/deps.sh

# The README's test command: sets itself up, then every test with -race.
test: deps
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 45m ./...

# Tests that need neither root nor a LAPI.
test-unit:
	$(GO) test -race -count=1 -short ./...

lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt would change: $$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

# A bounded minimisation: with the default (60 s) a target can sit at 0
# execs/s shrinking one input.
fuzz:
	$(GO) test -run=^$$ -fuzz=FuzzDecodeBatch -fuzztime=30s -fuzzminimizetime=200x ./internal/journal/
	$(GO) test -run=^$$ -fuzz=FuzzDecodeSnapshot -fuzztime=30s -fuzzminimizetime=200x ./internal/journal/
	$(GO) test -run=^$$ -fuzz=FuzzNormalize -fuzztime=30s -fuzzminimizetime=200x ./internal/lapi/

# Figures against references measured in the same run (never asserted).
bench: deps build
	$(GO) test -tags bench -count=1 -run 'Bench' -v ./internal/backend/iptables/ ./internal/backend/nftables/ ./internal/metrics/ ./internal/heal/ ./cmd/cs-journal-bouncer/ 2>&1 | grep -E 'bench|kernel_test|figure|---|^ok|FAIL'
	$(GO) test -run=^$$ -bench=. -benchmem ./internal/journal/ ./internal/lapi/

demo: deps build
	bash scripts/demo.sh

clean:
	rm -rf bin dist
