# syntax=docker/dockerfile:1
# Two images from one build: `idemproxy` (the ext_proc server) and `backend`
# (the demo's mock payment service).
#
#   docker build --target idemproxy -t idemproxy/idemproxy:dev .
#   docker build --target backend   -t idemproxy/backend:dev .
#
# The binaries are static (CGO_ENABLED=0), so any base runs them. The final
# images are Alpine rather than distroless: the compose healthchecks need a
# client inside the container (BusyBox wget against /readyz and /healthz), and
# Kubernetes' preStop hooks can use `sleep`. Both run as an unprivileged
# numeric user (65532), so `runAsNonRoot` can verify it.

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
# Module downloads are cached in their own layer, rebuilt only when go.mod or
# go.sum change.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG TARGETOS
ARG TARGETARCH
# What `idemproxy --version` prints (and the Helm chart's image tag):
#   docker build --build-arg VERSION=v1.2.3 --build-arg COMMIT=$(git rev-parse HEAD) .
ARG VERSION=dev
ARG COMMIT=unknown
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags="-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" -o /out/ ./cmd/idemproxy ./cmd/backend

FROM alpine:3.22 AS runtime
RUN apk add --no-cache ca-certificates \
 && addgroup -S -g 65532 app \
 && adduser -S -D -H -u 65532 -G app -s /sbin/nologin app
USER 65532:65532

FROM runtime AS backend
COPY --from=build /out/backend /usr/local/bin/backend
EXPOSE 8081
HEALTHCHECK --interval=5s --timeout=2s --retries=3 \
    CMD ["wget", "-qO-", "http://127.0.0.1:8081/healthz"]
ENTRYPOINT ["/usr/local/bin/backend"]

# Last, so a plain `docker build .` gives the server.
FROM runtime AS idemproxy
COPY --from=build /out/idemproxy /usr/local/bin/idemproxy
# 50051: ext_proc gRPC (and gRPC health); 9090: /healthz, /readyz, /metrics.
EXPOSE 50051 9090
HEALTHCHECK --interval=5s --timeout=2s --retries=3 \
    CMD ["wget", "-qO-", "http://127.0.0.1:9090/readyz"]
ENTRYPOINT ["/usr/local/bin/idemproxy"]
