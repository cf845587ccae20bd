package redisstore

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// pagedLister serves pages in turn; the cursor of page i is its index.
type pagedLister struct {
	pages []ListPage
	err   error // returned instead of the second page
	asked []ListOptions
}

func (l *pagedLister) List(_ context.Context, opts ListOptions) (ListPage, error) {
	l.asked = append(l.asked, opts)
	i := 0
	if opts.Cursor != "" {
		i, _ = strconv.Atoi(opts.Cursor)
	}
	if i > 0 && l.err != nil {
		return ListPage{}, l.err
	}
	return l.pages[i], nil
}

func TestHeldKeys_count(t *testing.T) {
	pages := []ListPage{
		{Keys: []KeyInfo{{State: "in_progress"}, {State: "outcome_unknown"}}, Cursor: "1", Scanned: 10},
		{Keys: []KeyInfo{{State: "in_progress"}}, Cursor: "0", Scanned: 5},
	}
	newHeld := func(l Lister) (*HeldKeys, *testenv.Buffer) {
		logs := &testenv.Buffer{}
		h, err := NewHeldKeys(l, 0, prometheus.NewRegistry(), slog.New(slog.NewJSONHandler(logs, nil)))
		require.NoError(t, err)
		return h, logs
	}

	t.Run("every page is counted by state, with the keys scanned", func(t *testing.T) {
		l := &pagedLister{pages: pages}
		h, _ := newHeld(l)
		h.count(t.Context())
		require.Equal(t, 2.0, gaugeValue(h.gauge.WithLabelValues("in_progress")))
		require.Equal(t, 1.0, gaugeValue(h.gauge.WithLabelValues("outcome_unknown")))
		require.Equal(t, 15.0, gaugeValue(h.scanned))
		require.Equal(t, []string{"in_progress", "outcome_unknown"}, l.asked[0].States)
		require.Equal(t, "1", l.asked[1].Cursor)
	})
	t.Run("a failed count keeps the last values and says so", func(t *testing.T) {
		l := &pagedLister{pages: pages}
		h, logs := newHeld(l)
		h.count(t.Context())
		l.err = errors.New("redis down")
		h.count(t.Context())
		require.Equal(t, 2.0, gaugeValue(h.gauge.WithLabelValues("in_progress")))
		require.Contains(t, logs.String(), "counting held keys failed; idemproxy_held_keys keeps its last value")
	})
	t.Run("interval 0 never counts", func(t *testing.T) {
		l := &pagedLister{pages: pages}
		h, _ := newHeld(l)
		h.Run(t.Context())
		require.Empty(t, l.asked)
	})
}
