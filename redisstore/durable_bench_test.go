package redisstore

import (
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/idemproxy/idemproxy/internal/idem"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// BenchmarkStore_durable is what a new key costs in the store (acquire,
// then complete) against a primary with one replica on loopback, without
// and with waiting for it: the price of --redis-min-replicas 1 on one
// connection, WAIT pipelined with each write.
func BenchmarkStore_durable(b *testing.B) {
	primary := redistopo.Start(b)
	host, port, err := net.SplitHostPort(primary.Addr)
	if err != nil {
		b.Fatal(err)
	}
	redistopo.Start(b, "--replicaof", host, port)
	c := primary.Client(b)
	ctx := b.Context()
	for c.Wait(ctx, 1, 100*time.Millisecond).Val() < 1 {
		time.Sleep(10 * time.Millisecond) // the replica's first sync
	}
	rec := idem.Record{Fingerprint: []byte("fp"), Status: 200, BodyStored: true,
		Body: []byte(`{"id":"ch_0123456789ab","amount":5000,"currency":"usd","status":"succeeded"}`)}
	round := 0
	for _, replicas := range []int{0, 1} {
		s := New(c, Options{MinReplicas: replicas, ReplicaTimeout: 250 * time.Millisecond})
		b.Run(fmt.Sprintf("acquire and complete, min replicas %d", replicas), func(b *testing.B) {
			round++
			p := fmt.Sprintf("durable-%d-%d-", replicas, round)
			b.ReportAllocs()
			for i := range b.N {
				k, tok := p+strconv.Itoa(i), "0123456789abcdef0123456789abcdef"
				if _, err := s.Acquire(ctx, k, claim(tok, []byte("fp"), time.Minute)); err != nil {
					b.Fatal(err)
				}
				if err := s.Complete(ctx, k, tok, rec, time.Hour); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
