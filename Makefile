# The two quick-start commands: `make demo` and `make test`.
.PHONY: demo test build vet

demo:
	@./scripts/demo.sh

test:
	@./scripts/test.sh

build:
	go build -o bin/ ./cmd/...

vet:
	go vet ./...
	gofmt -l .
