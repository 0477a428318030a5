# seqembed — the two commands that matter: `make demo` and `make test`.
GO ?= go
# Build with the toolchain go.mod names (a patched standard library; see scripts/govulncheck.sh),
# downloading it through the module proxy where the installed Go is older.
export GOTOOLCHAIN = auto
# go-nvml's header marks some NVML calls deprecated (CUDA 13); their cgo stubs warn on every build.
export CGO_CFLAGS ?= -O2 -g -Wno-deprecated-declarations
BIN := bin/seqembed
# ONNX Runtime's CPU library, fetched once from the npm registry (onnxruntime-node@1.29.0).
ORT_LIB = $(shell scripts/fetch-ort.sh)
# Go tools, installed from the module proxy at pinned versions into .cache/bin.
TOOLS := $(CURDIR)/.cache/bin
STATICCHECK_VERSION := v0.8.2
XTOOLS_VERSION := v0.52.0
# Helm, for the chart checks (deploy/helm): built from the module proxy like the other tools.
HELM_VERSION := v3.22.0

.PHONY: demo test build ort lint tools vet vuln bench bench-data clean soak chart

## demo: fetch ONNX Runtime, build, embed the 500 sample proteins with the tiny model on the CPU
demo: build ort
	@mkdir -p out
	ONNXRUNTIME_SHARED_LIBRARY_PATH=$(ORT_LIB) ./$(BIN) run testdata/sample/query500.fasta.gz --out out/demo.parquet --force

## test: lint (vet, staticcheck, deadcode), the Helm chart checks, govulncheck, and every test
## (race detector) with a real in-process NATS server and ORT
test: ort lint chart
	scripts/govulncheck.sh
	scripts/check-compose.sh
	HELM=$(TOOLS)/helm ONNXRUNTIME_SHARED_LIBRARY_PATH=$(ORT_LIB) $(GO) test -race -count=1 ./...

## vuln: govulncheck against the Go vulnerability database (built from golang.org/x/vulndb)
vuln:
	scripts/govulncheck.sh

## lint: go vet, staticcheck and deadcode (which must report nothing)
lint: tools
	$(GO) vet ./...
	$(TOOLS)/staticcheck ./...
	@out=$$($(TOOLS)/deadcode -test ./...); if [ -n "$$out" ]; then echo "deadcode: unreachable functions:"; echo "$$out"; exit 1; fi; echo "deadcode: none"

## chart: helm lint + helm template of deploy/helm/seqembed for each value set, every object
## decoded strictly into its k8s.io/api type or checked against the vendored KEDA and Prometheus
## Operator CRD schemas (deploy/helm/chart_test.go; no cluster needed)
chart: $(TOOLS)/helm
	HELM=$(TOOLS)/helm $(GO) test -count=1 ./deploy/helm/...

tools: $(TOOLS)/staticcheck $(TOOLS)/deadcode
$(TOOLS)/staticcheck:
	GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
$(TOOLS)/deadcode:
	GOBIN=$(TOOLS) $(GO) install golang.org/x/tools/cmd/deadcode@$(XTOOLS_VERSION)
$(TOOLS)/helm:
	GOBIN=$(TOOLS) $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

build:
	$(GO) build -o $(BIN) ./cmd/seqembed
	$(GO) build -o bin/seqembed-lab ./cmd/seqembed-lab

ort:
	@scripts/fetch-ort.sh >/dev/null

## bench: tokeniser, batcher, encoder and runner benchmarks (CPU)
bench: ort
	ONNXRUNTIME_SHARED_LIBRARY_PATH=$(ORT_LIB) $(GO) test -run XXX -bench . -benchtime 1s ./batcher ./arrowout ./fasta ./gpurun

## soak: chaos soak (not part of test): 3-node in-process cluster, worker SIGKILLs, a node
## shutdown, a consumer stepdown; 1,000,000 records with the tiny model; fails if anything is lost
soak: build ort
	ONNXRUNTIME_SHARED_LIBRARY_PATH=$(ORT_LIB) ./bin/seqembed-lab soak --seqembed ./$(BIN) --records 1000000

## bench-data: 20,000 real proteins (Debian mmseqs2-examples) and an 8,000-record xz subset
bench-data:
	scripts/bench-data.sh bench-data

clean:
	rm -rf bin out
