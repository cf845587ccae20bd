//go:build race

package envoy

// raceEnabled builds the binaries under test with -race too, so a data race
// in the real server under end-to-end load fails the suite.
const raceEnabled = true
