// Package envoy holds the Envoy configuration we ship (envoy.yaml) and the
// end-to-end tests that run real traffic through it: real Envoy, real
// Redis, the real idemproxy and backend binaries.
package envoy
