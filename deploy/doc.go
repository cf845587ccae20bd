// Package deploy holds no code: its tests check the deployment artifacts
// (docker-compose.yml, the Dockerfile, deploy/kubernetes, deploy/istio,
// deploy/envoy-gateway and envoy/envoy-compose.yaml) with real parsers, the
// official API types and the real Envoy. It is its own module so that the
// heavy dependencies those checks need (compose-go, k8s.io/api, kustomize,
// Istio's and Envoy Gateway's APIs) stay out of the server's go.mod.
package deploy
