package envoy

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v82"
)

// stripeClient is stripe-go v82 pointed at this stack's Envoy, with
// retries as given (stripe.DefaultMaxNetworkRetries is the SDK's default);
// prefix (such as /wait, a route of the shipped envoy.yaml) is put before
// each path on the wire, since the SDK refuses paths not under /v1 or /v2.
// Everything else is the SDK's own: its backoff, its retry rules, its key
// per call.
func stripeClient(s *stack, prefix string, retries int64) charges {
	b := stripe.NewBackendsWithConfig(&stripe.BackendConfig{
		URL:               stripe.String(s.url),
		MaxNetworkRetries: stripe.Int64(retries),
		HTTPClient:        &http.Client{Timeout: 40 * time.Second, Transport: prefixed{prefix, http.DefaultTransport}},
		LeveledLogger:     &stripe.LeveledLogger{Level: stripe.LevelNull},
	})
	return charges{stripe.NewClient("sk_test_idemproxy", stripe.WithBackends(b))}
}

// charges creates charges with stripe-go's client (stripe.Client, the
// API it recommends; the older charge.Client shares its backend, and so
// its retry rules).
type charges struct{ sc *stripe.Client }

// New creates the charge p describes.
func (c charges) New(p *stripe.ChargeCreateParams) (*stripe.Charge, error) {
	return c.sc.V1Charges.Create(context.Background(), p)
}

// chargeParams is a charge of amount under key; extra are the backend's
// test fields (delay, hangup) as name/value pairs.
func chargeParams(key string, amount int64, extra ...string) *stripe.ChargeCreateParams {
	p := &stripe.ChargeCreateParams{Amount: stripe.Int64(amount), Currency: stripe.String("usd")}
	p.SetIdempotencyKey(key)
	for i := 0; i+1 < len(extra); i += 2 {
		p.AddExtra(extra[i], extra[i+1])
	}
	return p
}

// requireStripeError checks that err is the typed error stripe-go made of
// a Stripe envelope, and returns it.
func requireStripeError(t *testing.T, err error, status int, typ stripe.ErrorType, code stripe.ErrorCode) *stripe.Error {
	t.Helper()
	var se *stripe.Error
	require.True(t, errors.As(err, &se), "want a typed *stripe.Error, got %T: %v", err, err)
	require.Equal(t, status, se.HTTPStatusCode, "%v", se)
	require.Equal(t, typ, se.Type)
	require.Equal(t, code, se.Code)
	return se
}

// chargeResult is a charge call made on a goroutine.
type chargeResult struct {
	ch   *stripe.Charge
	err  error
	done time.Time
}

func goCharge(c charges, p *stripe.ChargeCreateParams) <-chan chargeResult {
	out := make(chan chargeResult, 1)
	go func() {
		ch, err := c.New(p)
		out <- chargeResult{ch, err, time.Now()}
	}()
	return out
}

// outcomes reads idemproxy_requests_total for an outcome label.
func (s *stack) outcomes(t *testing.T, outcome string) int {
	t.Helper()
	return int(s.metric(t, `idemproxy_requests_total{outcome="`+outcome+`"}`))
}

// prefixed puts a route prefix before every request's path.
type prefixed struct {
	prefix string
	next   http.RoundTripper
}

func (p prefixed) RoundTrip(r *http.Request) (*http.Response, error) {
	if p.prefix != "" {
		r = r.Clone(r.Context())
		r.URL.Path = p.prefix + r.URL.Path
	}
	return p.next.RoundTrip(r)
}
