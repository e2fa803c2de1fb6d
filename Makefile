# flannel-go build, test, benchmark and demo targets.
GO        ?= go
BIN       := bin
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
# Packages whose tests run under the race detector (fast, logic-heavy).
RACE_PKGS := ./lease/... ./router/... ./tun/... ./udp/... ./internal/... ./fastpath/...
FUZZTIME  ?= 10s

.PHONY: all build test test-kube vet lint check-repo bench bench-quick fuzz demo clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/flanneld ./cmd/flanneld

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { gofmt -l .; echo 'gofmt: files above need formatting'; exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags kube $(KUBE_PKGS)
	# Linux only, but other platforms must still compile (stubs, build constraints).
	GOOS=darwin $(GO) vet ./...

lint: vet
	@command -v staticcheck >/dev/null 2>&1 || $(GO) install honnef.co/go/tools/cmd/staticcheck@v0.8.2
	PATH="$$PATH:$$($(GO) env GOPATH)/bin" staticcheck ./...
	PATH="$$PATH:$$($(GO) env GOPATH)/bin" staticcheck -tags kube $(KUBE_PKGS)

# Nothing built may be committed: no tracked ELF file, no tracked file over 1 MiB.
# The one exception is bpf2go's BPF objects in fastpath/ (go build embeds
# them; TestObjectsMatchSources checks them against their C sources).
check-repo:
	@bad=0; for f in $$(git ls-files); do \
	  [ -f "$$f" ] || continue; \
	  case "$$f" in fastpath/*_bpfel.o) ;; *) \
	  if [ "$$(head -c 4 "$$f" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then echo "check-repo: $$f is an ELF binary (build outputs are never committed)"; bad=1; fi;; esac; \
	  if [ "$$(stat -c %s "$$f")" -gt 1048576 ]; then echo "check-repo: $$f is over 1 MiB"; bad=1; fi; \
	done; exit $$bad

# All tests: repository checks, unit tests (race detector on), root/netns tests, integration tests.
test: check-repo lint
	$(GO) test -count=1 -race -timeout 300s $(RACE_PKGS)
	$(GO) test -count=1 -timeout 480s ./cmd/... ./bench/... ./dist/...

# Tests against a real kube-apiserver (Kubernetes mode), files tagged kube:
# tools/kube/build.sh builds kube-apiserver and kubectl once (about 7
# minutes on 2 cores) into ~/.cache/flannel-kube/<version>.
KUBE_PKGS := ./cmd/flanneld/ ./dist/
test-kube:
	@bin=$$(GO=$(GO) tools/kube/build.sh) && echo "kube binaries: $$bin" && \
	FLANNEL_KUBE_BIN=$$bin $(GO) test -count=1 -tags kube -timeout 1200s -run '^TestKube' $(KUBE_PKGS)

MICRO_BENCH := $(GO) test -run '^$$' -bench . -benchmem -count 6 ./router/... ./lease/...

# Every result file names its commit, binary, command and machine: the
# micro-benchmarks' in benchmark-format configuration lines (benchstat
# reads them), the data path's and control plane's in the JSON's meta.
bench: build
	@f=bench/results/$$(date -u +%Y-%m-%dT%H%M%SZ)-micro.txt; \
	{ FLANNEL_BENCH_COMMIT=$(VERSION) $(GO) run ./bench/benchmeta -binary $(BIN)/flanneld -command "$(MICRO_BENCH)" && $(MICRO_BENCH); } > $$f.tmp \
	  && mv $$f.tmp $$f && cat $$f && echo "results: $$f" || { cat $$f.tmp; exit 1; }
	FLANNEL_BENCH_COMMIT=$(VERSION) $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 3600s ./bench/ -args -report -flanneld $(CURDIR)/$(BIN)/flanneld

bench-quick: build
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 1200s ./bench/ -args -report -quick -flanneld $(CURDIR)/$(BIN)/flanneld

fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$f"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

demo: build
	$(GO) run ./cmd/flannel-demo -flanneld $(BIN)/flanneld $(DEMOFLAGS)

clean:
	rm -rf $(BIN) bench/results/*.tmp
	$(GO) clean -testcache
