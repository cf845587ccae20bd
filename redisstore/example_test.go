package redisstore_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemproxy/idemproxy/internal/idem"
	"github.com/idemproxy/idemproxy/redisstore"
)

// Example shows one request going through the store: acquire the key, do
// the work, store the response. It needs a Redis, so it is not run.
func Example() {
	ctx := context.Background()
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer client.Close()
	store := redisstore.New(client, redisstore.Options{Prefix: "idemproxy:"})

	// The processor builds the key from the route and the Idempotency-Key
	// header; the store hashes it before it reaches Redis.
	key := "POST /orders\x00idempotency-key-123"
	fingerprint := []byte("sha256 of method, path and body")
	// The owner token must be unguessable: holding it allows renewing,
	// completing or releasing the lock.
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		fmt.Println("no token:", err)
		return
	}
	token := hex.EncodeToString(b[:])

	// A 30 s lease, renewed while the request runs, inside a record kept
	// for 24 h: if this process dies, retries find an unknown outcome and
	// are refused instead of running the request a second time.
	acq, err := store.Acquire(ctx, key, idem.Claim{
		Token: token, Fingerprint: fingerprint, Scope: "api.example",
		Lease: idem.Lease{TTL: 30 * time.Second, Hold: 24 * time.Hour},
	})
	if err != nil {
		fmt.Println("store unavailable:", err)
		return
	}
	switch acq.State {
	case idem.StateAcquired:
		// Forward the request upstream, calling store.Renew while it runs.
		rec := idem.Record{
			Fingerprint: fingerprint,
			Status:      201,
			Headers:     []idem.Header{{Name: "content-type", Value: "application/json"}},
			Body:        []byte(`{"id":1}`),
			BodyStored:  true,
		}
		if err := store.Complete(ctx, key, token, rec, 24*time.Hour); err != nil {
			fmt.Println("response not stored:", err)
		}
	case idem.StateInProgress:
		fmt.Println("busy; retry after", acq.LockTTL)
	case idem.StateUnknown:
		fmt.Println("may have run; never run again until an operator clears it")
	case idem.StateCompleted:
		fmt.Println("replay status", acq.Record.Status)
	}
}
