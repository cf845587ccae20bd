// Package deploy holds no code: its tests check the deployment artifacts
// (docker-compose.yml, the Dockerfile, deploy/kubernetes, deploy/istio,
// deploy/envoy-gateway, envoy/envoy-compose.yaml, deploy/prometheus,
// deploy/grafana and the Helm chart) with real parsers, the official API
// types, the real Envoy and Debian's Prometheus. The module's one code
// package, deploy/grafana, builds the dashboard with the Grafana Foundation
// SDK. It is its own module so that the heavy dependencies (compose-go,
// k8s.io/api, kustomize, Istio's and Envoy Gateway's APIs, Helm, the
// Foundation SDK) stay out of the server's go.mod.
package deploy
