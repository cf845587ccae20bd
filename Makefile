# The two quick-start commands: `make demo` and `make test`; `make bench`
# runs the benchmark (BENCHMARKS.md; idembench flags in BENCH_FLAGS).
.PHONY: demo test bench build vet

demo:
	@./scripts/demo.sh

test:
	@./scripts/test.sh

bench:
	@./scripts/bench.sh $(BENCH_FLAGS)

build:
	go build -o bin/ ./cmd/...

vet:
	go vet ./...
	gofmt -l .
