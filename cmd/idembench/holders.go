package main

import (
	"context"
	"fmt"
	"time"

	"github.com/idemproxy/idemproxy/internal/loadgen"
	"github.com/idemproxy/idemproxy/internal/testenv"
)

// waitMetric polls an idemproxy series until cond holds or timeout.
func (b *bench) waitMetric(ctx context.Context, admin, series string, timeout time.Duration, cond func(float64) bool) error {
	return testenv.Poll(ctx, timeout, func(ctx context.Context) error {
		v, err := testenv.ReadMetric(ctx, b.st.http, "http://"+admin+"/metrics", series)
		if err == nil && !cond(v) {
			err = fmt.Errorf("%s is %v", series, v)
		}
		return err
	})
}

// hold sends reqs through env, each on a connection of its own, and waits
// until the idemproxy behind it has acquired them all (within ready).
func (b *bench) hold(ctx context.Context, env *server, reqs [][]byte, timeout, ready time.Duration) (*loadgen.Holders, error) {
	idem := env.ext
	start, err := testenv.ReadMetric(ctx, b.st.http, "http://"+idem.admin+"/metrics", acquiredSeries)
	if err != nil {
		return nil, err
	}
	h, err := loadgen.Hold(ctx, env.addr, reqs, timeout)
	if err != nil {
		return nil, err
	}
	if err := b.waitMetric(ctx, idem.admin, acquiredSeries, ready,
		func(v float64) bool { return v >= start+float64(len(reqs)) }); err != nil {
		h.Cut()
		h.Wait()
		return nil, err
	}
	return h, nil
}
