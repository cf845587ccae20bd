package redisstore

import (
	"strconv"
	"testing"
	"time"

	"github.com/idemproxy/idemproxy/internal/idem"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// Each store operation against a real redis-server on loopback: one round
// trip each, so these are mostly Redis and network latency.
func BenchmarkStore(b *testing.B) {
	srv := redistopo.Start(b)
	s := New(srv.Client(b), Options{})
	ctx := b.Context()
	rec := idem.Record{Fingerprint: []byte("fp"), Status: 200, BodyStored: true,
		Headers: []idem.Header{{Name: "content-type", Value: "application/json"}},
		Body:    []byte(`{"id":"ch_0123456789ab","amount":5000,"currency":"usd","status":"succeeded"}`)}
	const tok = "0123456789abcdef0123456789abcdef"
	// The testing package calls each sub-benchmark several times with a
	// growing b.N; every call needs keys of its own.
	round := 0
	fresh := func(name string) string { round++; return name + "-" + strconv.Itoa(round) + "-" }

	b.Run("acquire new key", func(b *testing.B) {
		p := fresh("new")
		b.ReportAllocs()
		for i := range b.N {
			if _, err := s.Acquire(ctx, p+strconv.Itoa(i), claim(tok, []byte("fp"), time.Minute)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("renew", func(b *testing.B) {
		key := fresh("renewed")
		if _, err := s.Acquire(ctx, key, claim(tok, []byte("fp"), time.Minute)); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for range b.N {
			if err := s.Renew(ctx, key, tok, lease(time.Minute)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("complete", func(b *testing.B) {
		p := fresh("done")
		for i := range b.N {
			if _, err := s.Acquire(ctx, p+strconv.Itoa(i), claim(tok, []byte("fp"), time.Minute)); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			if err := s.Complete(ctx, p+strconv.Itoa(i), tok, rec, time.Hour); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("acquire completed key (replay)", func(b *testing.B) {
		key := fresh("replay")
		if _, err := s.Acquire(ctx, key, claim(tok, []byte("fp"), time.Minute)); err != nil {
			b.Fatal(err)
		}
		if err := s.Complete(ctx, key, tok, rec, time.Hour); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			if _, err := s.Acquire(ctx, key, claim(tok, []byte("fp"), time.Minute)); err != nil {
				b.Fatal(err)
			}
		}
	})
}
