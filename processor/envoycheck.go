package processor

// idemproxy checks the Envoy config it is given, from the streams it sees:
// Envoy does not send its config, but the first message of every stream
// says how bodies are sent (protocol_config), and
// the response headers carry the attributes the filter asks for, or none
// (both measured on Envoy 1.36.2 to 1.40.0).
// Each missing piece that weakens the promise is logged once, as an error
// naming the setting to fix, and shown by the gauge
// idemproxy_envoy_config_problems{problem}, 1 while the problem was seen
// within the last problemWindow. docs/envoy-and-mesh.md lists what is
// checked and what cannot be.

import (
	"sync"
	"sync/atomic"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
)

// The problems, the values of the gauge's label.
const (
	// problemNoCodeDetails: response headers without the
	// response.code_details attribute.
	problemNoCodeDetails = "no_code_details"
	// problemBodyNotBuffered: request_body_mode is not BUFFERED.
	problemBodyNotBuffered = "request_body_not_buffered"
	// problemResponseBodyNotStreamed: response_body_mode is not STREAMED.
	problemResponseBodyNotStreamed = "response_body_not_streamed"
	// problemNoResponseHeaders: keyed requests went upstream, one after
	// another, and no response headers came within the window.
	problemNoResponseHeaders = "no_response_headers"
)

// allProblems is every value of the label, in the order of the docs.
var allProblems = []string{problemNoCodeDetails, problemBodyNotBuffered, problemResponseBodyNotStreamed, problemNoResponseHeaders}

// problemFix is the log line of each problem: what it costs, and the fix.
var problemFix = map[string]string{
	problemNoCodeDetails: "Envoy config problem: Envoy does not send the response.code_details attribute, so idemproxy cannot tell Envoy's own replies (route timeouts, resets, connect failures) from the upstream's. " +
		"Until it does, a 502, 503 or 504 without x-envoy-upstream-service-time is taken for Envoy's, and its key is held as an unknown outcome (409 outcome-unknown), also when the request never left Envoy. " +
		`Add response_attributes: ["response.code_details"] to the ext_proc filter`,
	problemBodyNotBuffered: "Envoy config problem: Envoy does not buffer the request body, so idemproxy has no fingerprint: every keyed request with a body is refused (500 misconfigured). " +
		"Set processing_mode.request_body_mode: BUFFERED in the ext_proc filter",
	problemResponseBodyNotStreamed: "Envoy config problem: Envoy does not stream the response body to idemproxy: a response may be stored without its body (a retry gets 409 response-not-stored instead of the replay), " +
		"or, BUFFERED, one larger than Envoy's buffer fails after the upstream ran. Set processing_mode.response_body_mode: STREAMED in the ext_proc filter",
	problemNoResponseHeaders: "Envoy config problem: keyed requests went upstream one after another and, for 10 minutes, Envoy sent idemproxy no response headers at all: each key is held as an unknown outcome. " +
		"Set processing_mode.response_header_mode: SEND in the ext_proc filter and its per-route overrides (on Envoy 1.36 and older, an upstream that refuses every connection also looks like this: Envoy's own replies skip ext_proc there)",
}

// problemWindow is how long a problem shows after it was last seen, and
// how long it must go unseen before it is logged again: a config fixed
// live (xDS) clears the gauge, and a fleet of sidecars of which some lack
// a setting neither flaps it nor floods the log.
const problemWindow = 10 * time.Minute

// noResponseRun is how many forwarded keyed requests in a row must end
// without response headers before that is taken for a config problem: one
// can be a client that hung up or an upstream reset.
const noResponseRun = 5

// configProblems is the gauge idemproxy_envoy_config_problems and the
// state behind it.
type configProblems struct {
	desc *prometheus.Desc
	now  func() time.Time

	mu   sync.Mutex
	last map[string]time.Time // when each problem was last seen
	// unanswered counts forwarded keyed requests in a row that ended
	// with no response headers, and lastHeaders is when response headers
	// last came (Unix nanoseconds; 0: never). Atomic: touched on every
	// response.
	unanswered, lastHeaders atomic.Int64
}

func newConfigProblems() *configProblems {
	return &configProblems{
		desc: prometheus.NewDesc("idemproxy_envoy_config_problems",
			"Envoy config problems seen in the ext_proc streams within the last 10 minutes (1: seen), by problem: no_code_details, request_body_not_buffered, response_body_not_streamed, no_response_headers.",
			[]string{"problem"}, nil),
		now:  time.Now,
		last: map[string]time.Time{},
	}
}

func (c *configProblems) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *configProblems) Collect(ch chan<- prometheus.Metric) {
	for _, p := range allProblems {
		v := 0.0
		if c.showing(p) {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, v, p)
	}
}

// showing reports whether problem p was seen within the window.
func (c *configProblems) showing(p string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.last[p]
	return ok && c.now().Sub(t) < problemWindow
}

// seen records a sighting of p and reports whether it is news: p was not
// seen within the window.
func (c *configProblems) seen(p string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	t, ok := c.last[p]
	c.last[p] = now
	return !ok || now.Sub(t) >= problemWindow
}

// responded records response headers (headers) or a forwarded keyed
// request that ended without them, and reports whether that is now a
// config problem that is news: a run of noResponseRun such requests, and
// no response headers at all within the window. (Clients that hang up
// before their answer make runs too, but not a window without answers.)
func (c *configProblems) responded(headers bool) bool {
	now := c.now()
	if headers {
		c.lastHeaders.Store(now.UnixNano())
		if c.unanswered.Load() != 0 {
			c.unanswered.Store(0)
		}
		return false
	}
	if c.unanswered.Add(1) < noResponseRun {
		return false
	}
	if last := c.lastHeaders.Load(); last != 0 && now.Sub(time.Unix(0, last)) < problemWindow {
		return false
	}
	return c.seen(problemNoResponseHeaders)
}

// configProblem records problem p and logs it when it is news.
func (s *Server) configProblem(p string, attrs ...any) {
	if s.metrics.config.seen(p) {
		s.log.Error(problemFix[p], append([]any{"problem", p}, attrs...)...)
	}
}

// checkProtocol reads the processing modes Envoy announces on a stream's
// first message (nil: an Envoy that announces none).
func (s *Server) checkProtocol(pc *extprocv3.ProtocolConfiguration) {
	if pc == nil {
		return
	}
	if m := pc.GetRequestBodyMode(); m != filterv3.ProcessingMode_BUFFERED {
		s.configProblem(problemBodyNotBuffered, "request_body_mode", m.String())
	}
	if m := pc.GetResponseBodyMode(); m != filterv3.ProcessingMode_STREAMED {
		s.configProblem(problemResponseBodyNotStreamed, "response_body_mode", m.String())
	}
}

// checkResponse notes response headers, and whether they carried the code
// details.
func (s *Server) checkResponse(withDetails bool) {
	s.checkAnswered(true)
	if !withDetails {
		s.configProblem(problemNoCodeDetails)
	}
}

// checkAnswered notes response headers (headers), or a forwarded keyed
// request that ended without them.
func (s *Server) checkAnswered(headers bool) {
	if s.metrics.config.responded(headers) {
		s.log.Error(problemFix[problemNoResponseHeaders], "problem", problemNoResponseHeaders, "in_a_row", noResponseRun)
	}
}
