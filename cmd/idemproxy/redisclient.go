package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// The --redis-mode topologies.
const (
	modeStandalone = "standalone"
	modeCluster    = "cluster"
	modeSentinel   = "sentinel"
)

// redisConn is the client of one topology, and the one thing that knows
// which: standalone and sentinel are one *redis.Client (a Sentinel-aware
// one follows the primary by itself), a cluster is a *redis.ClusterClient.
type redisConn struct {
	mode    string
	client  redis.UniversalClient
	cluster *redis.ClusterClient // mode cluster only
}

// eachPrimary calls fn on every primary: the server, the Sentinel's current
// primary, or every cluster primary (concurrently). addr is "" outside a
// cluster.
func (r *redisConn) eachPrimary(ctx context.Context, fn func(ctx context.Context, addr string, c redis.Cmdable) error) error {
	if r.cluster == nil {
		return fn(ctx, "", r.client)
	}
	return r.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		return fn(ctx, c.Options().Addr, c)
	})
}

func (r *redisConn) Close() error { return r.client.Close() }

// redisOptions are the parsed --redis-url of each mode; one is set.
type redisOptions struct {
	standalone *redis.Options
	cluster    *redis.ClusterOptions
	sentinel   *redis.FailoverOptions
}

// parseRedisURL parses rawURL with go-redis's parser for mode, so extra
// nodes (addr=), the Sentinel master (master_name=) and client options are
// query parameters. Errors name the offending part, never the URL itself,
// which may hold a password.
func parseRedisURL(mode, rawURL string) (redisOptions, error) {
	var o redisOptions
	var err error
	switch mode {
	case modeStandalone:
		o.standalone, err = redis.ParseURL(rawURL)
		if err != nil && strings.Contains(err.Error(), "addr") {
			err = fmt.Errorf("%w (several addresses need --redis-mode cluster or sentinel)", err)
		}
	case modeCluster:
		o.cluster, err = redis.ParseClusterURL(rawURL)
		if err == nil {
			err = clusterPath(rawURL)
		}
	case modeSentinel:
		o.sentinel, err = redis.ParseFailoverURL(rawURL)
		if err == nil && o.sentinel.MasterName == "" {
			err = errors.New("sentinel mode needs the monitored primary's name: ?master_name=NAME")
		}
	default:
		return o, fmt.Errorf("--redis-mode %q must be %s, %s or %s", mode, modeStandalone, modeCluster, modeSentinel)
	}
	if uerr := (*url.Error)(nil); errors.As(err, &uerr) {
		err = uerr.Err // url.Error repeats the URL, password included
	}
	if err != nil {
		return o, fmt.Errorf("--redis-url (%s mode): %w", mode, err)
	}
	return o, nil
}

// clusterPath refuses a database number: a cluster has database 0 only,
// and ParseClusterURL would ignore it silently.
func clusterPath(rawURL string) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return err
	}
	if p := strings.Trim(u.Path, "/"); p != "" && p != "0" {
		return fmt.Errorf("database %q: a Redis Cluster has database 0 only", p)
	}
	return nil
}

// tlsConfig is the parsed URL's TLS settings (rediss://), or nil.
func (o redisOptions) tlsConfig() *tls.Config {
	switch {
	case o.standalone != nil:
		return o.standalone.TLSConfig
	case o.cluster != nil:
		return o.cluster.TLSConfig
	case o.sentinel != nil:
		return o.sentinel.TLSConfig
	}
	return nil
}

// newRedis builds the client of s.RedisMode with our connection settings:
// every Redis call must fail fast enough for the client to get our 503,
// not Envoy's 504, whatever the topology.
func newRedis(s settings) (*redisConn, error) {
	o, err := parseRedisURL(s.RedisMode, s.RedisURL)
	if err != nil {
		return nil, err
	}
	if tc := o.tlsConfig(); tc != nil && s.RedisCA != "" {
		pool, err := loadPool(s.RedisCA)
		if err != nil {
			return nil, fmt.Errorf("--redis-ca: %w", err)
		}
		tc.RootCAs = pool
	}
	t := s.RedisTimeout
	r := &redisConn{mode: s.RedisMode}
	switch {
	case o.cluster != nil:
		c := o.cluster
		c.DialTimeout, c.ReadTimeout, c.WriteTimeout, c.PoolTimeout = t, t, t, t
		c.Protocol, c.DisableIdentity = 2, true
		c.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
		c.MinIdleConns, c.MaxRetries = 4, 1
		c.DialerRetries, c.DialerRetryTimeout = 1, 10*time.Millisecond
		c.ContextTimeoutEnabled = true
		r.cluster = redis.NewClusterClient(c)
		r.client = r.cluster
	case o.sentinel != nil:
		c := o.sentinel
		c.DialTimeout, c.ReadTimeout, c.WriteTimeout, c.PoolTimeout = t, t, t, t
		c.Protocol, c.DisableIdentity = 2, true
		c.MinIdleConns, c.MaxRetries = 4, 1
		c.DialerRetries, c.DialerRetryTimeout = 1, 10*time.Millisecond
		c.ContextTimeoutEnabled = true
		r.client = redis.NewFailoverClient(c)
	default:
		c := o.standalone
		c.DialTimeout, c.ReadTimeout, c.WriteTimeout, c.PoolTimeout = t, t, t, t
		// A new connection should cost one round trip, not four: the
		// request path's Redis deadline covers the dial too. RESP2 needs
		// no HELLO, and the client-name and maintenance-notification
		// handshakes are extras we do not use.
		c.Protocol, c.DisableIdentity = 2, true
		c.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
		// A few warm connections, so a quiet period does not make the
		// next requests pay for dials.
		c.MinIdleConns, c.MaxRetries = 4, 1
		// go-redis retries a refused dial 5 times, 100 ms apart, by
		// default: 0.5 s of a client's wait spent on a Redis that is
		// gone. Fail at once; the health checker notices recovery within
		// its interval.
		c.DialerRetries, c.DialerRetryTimeout = 1, 10*time.Millisecond
		c.ContextTimeoutEnabled = true
		r.client = redis.NewClient(c)
	}
	return r, nil
}
