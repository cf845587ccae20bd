// Command gen writes idemproxy's Grafana dashboard (package grafana) to
// grafana/idemproxy-dashboard.json. Run it from deploy/: go run ./grafana/gen
package main

import (
	"fmt"
	"os"

	"github.com/idemproxy/idemproxy/deploy/grafana"
)

func main() {
	b, err := grafana.JSON()
	if err == nil {
		err = os.WriteFile("grafana/idemproxy-dashboard.json", b, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}
