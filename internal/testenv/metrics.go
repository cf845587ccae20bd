package testenv

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics is one scrape of a Prometheus text exposition, by family name.
type Metrics map[string]*dto.MetricFamily

// ParseMetrics parses a Prometheus text exposition.
func ParseMetrics(text string) (Metrics, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("parsing metrics: %w", err)
	}
	return fams, nil
}

// ScrapeMetrics reads and parses url (a /metrics endpoint).
func ScrapeMetrics(ctx context.Context, c *http.Client, url string) (Metrics, error) {
	text, err := GetText(ctx, c, url)
	if err != nil {
		return nil, err
	}
	return ParseMetrics(text)
}

// Value finds one series, written as in the exposition: "name" or
// `name{label="v",...}`, with exactly that label set.
func (m Metrics) Value(series string) (float64, bool) {
	name, want, err := parseSeries(series)
	if err != nil {
		return 0, false
	}
	fam := m[name]
	if fam == nil {
		return 0, false
	}
	for _, s := range fam.GetMetric() {
		if maps.Equal(labels(s), want) {
			return value(s), true
		}
	}
	return 0, false
}

// Sum adds up every series of one family, e.g. all outcomes of
// idemproxy_requests_total; an absent family sums to 0.
func (m Metrics) Sum(family string) float64 {
	var sum float64
	for _, s := range m[family].GetMetric() {
		sum += value(s)
	}
	return sum
}

// parseSeries reads a series name with its labels, using the exposition
// parser itself, so quoting works as it does there.
func parseSeries(series string) (string, map[string]string, error) {
	m, err := ParseMetrics(series + " 0\n")
	if err != nil || len(m) != 1 {
		return "", nil, fmt.Errorf("series %q: %v", series, err)
	}
	for name, fam := range m {
		return name, labels(fam.GetMetric()[0]), nil
	}
	panic("unreachable")
}

func labels(s *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range s.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

// value is a counter's, gauge's or untyped series' value, or a
// histogram's number of observations.
func value(s *dto.Metric) float64 {
	switch {
	case s.Counter != nil:
		return s.GetCounter().GetValue()
	case s.Gauge != nil:
		return s.GetGauge().GetValue()
	case s.Histogram != nil:
		return float64(s.GetHistogram().GetSampleCount())
	}
	return s.GetUntyped().GetValue()
}

// ReadMetric reads one series (see Value) from a /metrics URL; a missing
// series is an error.
func ReadMetric(ctx context.Context, c *http.Client, url, series string) (float64, error) {
	m, err := ScrapeMetrics(ctx, c, url)
	if err != nil {
		return 0, err
	}
	v, ok := m.Value(series)
	if !ok {
		return 0, fmt.Errorf("metric %s not found at %s", series, url)
	}
	return v, nil
}

// Metric is ReadMetric for a test.
func Metric(t TB, url, series string) float64 {
	t.Helper()
	v, err := ReadMetric(t.Context(), http.DefaultClient, url, series)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return v
}

// MetricSum sums one family from a /metrics URL for a test.
func MetricSum(t TB, url, family string) float64 {
	t.Helper()
	m, err := ScrapeMetrics(t.Context(), http.DefaultClient, url)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return m.Sum(family)
}
