package redisstore

// Where a key is served: on a cluster, a plain client of the primary of
// its slot, found by the cluster client's slot map and moved by
// redirects. exec (exec.go) and the durable writes send scripts there;
// listings visit every primary (list.go).

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Cluster is what a Redis Cluster client offers beyond Client: the primary
// of a key's slot, every primary, and a reload of the slot map.
// *redis.ClusterClient satisfies it; New detects it.
type Cluster interface {
	MasterForKey(ctx context.Context, key string) (*redis.Client, error)
	ForEachMaster(ctx context.Context, fn func(ctx context.Context, c *redis.Client) error) error
	ReloadState(ctx context.Context)
}

// seen passes err on; on a cluster a failed call also makes the slot map
// reload in the background (go-redis only does so on MOVED and READONLY),
// so after a failover the next attempt goes to the new primary, not the
// dead one.
func (s *Store) seen(err error) error {
	if err != nil && s.cluster != nil && !errors.Is(err, redis.Nil) {
		s.cluster.ReloadState(context.Background())
	}
	return err
}

// primaryFor is the client that serves key and the primary's address:
// the store's client and "", or on a cluster a plain client of the
// primary of key's slot and its address.
func (s *Store) primaryFor(ctx context.Context, key string) (Client, string, error) {
	if s.cluster == nil {
		return s.client, "", nil
	}
	c, err := s.cluster.MasterForKey(ctx, key)
	if err != nil {
		return nil, "", err
	}
	return c, c.Options().Addr, nil
}

// primaryAt returns the client of the primary at addr after reloading the
// slot map (ForEachMaster reloads it before it visits the primaries), so
// a MOVED also updates where later calls go.
func (s *Store) primaryAt(ctx context.Context, addr string) (*redis.Client, error) {
	var (
		mu    sync.Mutex
		found *redis.Client
	)
	err := s.cluster.ForEachMaster(ctx, func(_ context.Context, c *redis.Client) error {
		if c.Options().Addr == addr {
			mu.Lock()
			found = c
			mu.Unlock()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if found == nil {
		return nil, fmt.Errorf("redirected to %s, which the cluster does not list as a primary yet", addr)
	}
	return found, nil
}

// redirection parses a "MOVED slot host:port" or "ASK slot host:port" error.
func redirection(err error) (moved, ask bool, addr string) {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return false, false, ""
	}
	f := strings.Fields(rerr.Error())
	if len(f) != 3 {
		return false, false, ""
	}
	switch f[0] {
	case "MOVED":
		return true, false, f[2]
	case "ASK":
		return false, true, f[2]
	}
	return false, false, ""
}
