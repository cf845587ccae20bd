# The quick-start commands: `make demo` and `make test`. While editing:
# `make unit` (no Envoy, no Redis, seconds) and `make lint`. `make bench`
# runs the benchmark (docs/benchmarks.md; idembench flags in BENCH_FLAGS).
# `make capacity` prints what one key costs in Redis and Valkey
# (docs/capacity.md).
# `make partitions` runs the network-partition suite's long schedule (as
# root; PARTITION_SEED and PARTITION_SEEDS pick the seeds; make test runs
# its short schedule).
.PHONY: demo test unit lint vet bench capacity build partitions

demo:
	@./scripts/demo.sh

test:
	@./scripts/test.sh

partitions:
	@./scripts/test.sh partitions

# Every test that needs a real Envoy, Redis or another built binary skips
# itself under -short (internal/testenv.NeedsBinaries); CI never passes it.
unit:
	go test -short ./...
	cd deploy && go test -short ./...

lint:
	@./scripts/lint.sh

vet: lint

bench:
	@./scripts/bench.sh $(BENCH_FLAGS)

capacity:
	@./scripts/capacity.sh

build:
	go build -o bin/ ./cmd/...
