# flannel-go build, test, benchmark and demo targets.
GO        ?= go
BIN       := bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS   := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
# Packages whose tests run under the race detector (fast, logic-heavy).
RACE_PKGS := ./lease/... ./router/... ./tun/... ./udp/... ./internal/... ./fastpath/...
FUZZTIME  ?= 10s

.PHONY: all build test test-kernels test-kube vet lint check-repo licenses release release-check image image-debs image-lock bench bench-quick fuzz demo clean

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

# THIRD_PARTY_LICENSES: the licence texts of every module linked into
# flanneld; internal/licenses' test fails when it is stale.
licenses:
	$(GO) run ./internal/licenses/cmd/thirdparty -o THIRD_PARTY_LICENSES

# Release tarballs of HEAD (bin/release/): flanneld for linux/amd64 and
# linux/arm64 with the units, licences and INSTALL, and SHA256SUMS. Refuses
# a work tree with uncommitted changes.
release:
	$(GO) run ./internal/release/cmd/mkrelease -out $(BIN)/release

# make release, then the same again in a fresh Go build cache into
# bin/release-check/: fails unless every byte is the same. .ci/run runs it
# after make test (two cold builds per architecture are too slow for it).
release-check:
	rm -rf $(BIN)/release $(BIN)/release-check
	$(GO) run ./internal/release/cmd/mkrelease -out $(BIN)/release -check $(BIN)/release-check

# The container image (bin/image/oci, an OCI layout, and
# bin/image/flannel-go-image-$(VERSION).tar, an OCI archive), tagged
# $(VERSION), built without a container runtime from the static flanneld
# and the Debian packages pinned in dist/image/debs.lock. image-debs
# downloads those into IMAGE_DEBS (apt-get download; .ci/run does it before
# make test, which then needs no network); image-lock re-pins them.
IMAGE_DEBS ?= $(HOME)/.cache/flannel-go/debs
IMAGE_LOCK ?= dist/image/debs.lock
export IMAGE_DEBS IMAGE_LOCK
IMAGE_LDFLAGS := -s -w -buildid= -X main.version=$(VERSION) -X main.commit=$(COMMIT)

image-lock:
	$(GO) run ./internal/image/cmd/debs -resolve -lock $(IMAGE_LOCK)

image-debs:
	$(GO) run ./internal/image/cmd/debs -lock $(IMAGE_LOCK) -fetch $(IMAGE_DEBS)

image: image-debs
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -trimpath -buildvcs=false -ldflags '$(IMAGE_LDFLAGS)' -o $(BIN)/image/flanneld ./cmd/flanneld
	$(GO) run ./internal/image/cmd/mkimage -flanneld $(BIN)/image/flanneld -debs $(IMAGE_DEBS) -lock $(IMAGE_LOCK) -out $(BIN)/image -version $(VERSION) -commit $(COMMIT)

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
# dist/'s tests run the container image that make image builds (they skip
# without it, fail under CI=true): run make image test. .ci/run builds the
# image before make test, so that its cold static build of flanneld (about
# 2 minutes on 2 cores) is not counted in make test's 10 minutes.
# The container image comes first: dist/'s tests run it as a cluster node.
test: check-repo lint image
	$(GO) test -count=1 -race -timeout 300s $(RACE_PKGS)
	$(GO) test -count=1 -timeout 480s ./cmd/... ./bench/... ./dist/...

# The fast path's tests and a two-node cluster on Debian's stock kernels
# 5.10, 6.1 and 6.12 in QEMU (TCG) and on the host's kernel, one after
# another, against the table in internal/kernelmatrix/matrix.go. Needs root,
# qemu-system-x86, busybox-static and kmod. KERNEL_ROWS=6.1,host picks rows;
# results: bench/results/<time>-kernels.jsonl, logs: bin/kernel-matrix/.
KERNEL_ROWS ?=
test-kernels:
	$(GO) run ./cmd/kernel-matrix -commit $(VERSION) $(if $(KERNEL_ROWS),-rows $(KERNEL_ROWS))

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
	FLANNEL_BENCH_COMMIT=$(VERSION) $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 7200s ./bench/ -args -report -flanneld $(CURDIR)/$(BIN)/flanneld

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
