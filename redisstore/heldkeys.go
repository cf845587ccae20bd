package redisstore

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// HeldKeys counts, every interval, the keys that are in progress and the
// ones held as unknown outcomes, so an alert can fire on keys nobody will
// settle: a crashed owner never says a word, only its record shows it.
type HeldKeys struct {
	store    Lister
	interval time.Duration
	log      *slog.Logger
	gauge    *prometheus.GaugeVec
	scanned  prometheus.Gauge
}

// Lister is the part of the store HeldKeys needs; *Store is one.
type Lister interface {
	List(ctx context.Context, opts ListOptions) (ListPage, error)
}

// maxHeldPages bounds one count: past it the gauge shows what was counted
// and says so in the log, instead of scanning a huge Redis without end.
const maxHeldPages = 10_000

// NewHeldKeys registers the idemproxy_held_keys gauges; Run counts.
func NewHeldKeys(store Lister, interval time.Duration, reg prometheus.Registerer, log *slog.Logger) (*HeldKeys, error) {
	h := &HeldKeys{store: store, interval: interval, log: log,
		gauge: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "idemproxy_held_keys",
			Help: "Keys in progress and keys held as unknown outcomes (refused until an operator clears them), at the last count.",
		}, []string{"state"}),
		scanned: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "idemproxy_held_keys_scanned",
			Help: "Redis keys the last count of idemproxy_held_keys looked at.",
		}),
	}
	for _, c := range []prometheus.Collector{h.gauge, h.scanned} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// Run counts at once, then every interval, until ctx ends; interval 0 never.
func (h *HeldKeys) Run(ctx context.Context) {
	if h.interval <= 0 {
		return
	}
	t := time.NewTicker(h.interval)
	defer t.Stop()
	for {
		h.count(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (h *HeldKeys) count(ctx context.Context) {
	counts := map[string]float64{idem.StateInProgress.String(): 0, idem.StateUnknown.String(): 0}
	opts := ListOptions{States: []string{idem.StateInProgress.String(), idem.StateUnknown.String()}, Limit: 1000}
	scanned := 0
	for pages := 0; ; pages++ {
		if pages == maxHeldPages {
			h.log.Warn("counting held keys stopped early; idemproxy_held_keys shows a part", "scanned", scanned)
			break
		}
		page, err := h.store.List(ctx, opts)
		if err != nil {
			if ctx.Err() == nil {
				h.log.Warn("counting held keys failed; idemproxy_held_keys keeps its last value", "error", err)
			}
			return
		}
		scanned += page.Scanned
		for _, k := range page.Keys {
			counts[k.State]++
		}
		if page.Cursor == "0" {
			break
		}
		opts.Cursor = page.Cursor
	}
	for st, n := range counts {
		h.gauge.WithLabelValues(st).Set(n)
	}
	h.scanned.Set(float64(scanned))
}
