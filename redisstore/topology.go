package redisstore

// Topologies. One --redis-url names a standalone server, some nodes of a
// cluster, or the sentinels of a monitored primary; Connect builds the
// go-redis client of that topology with idemproxy's connection settings,
// and the Topology keeps what idemproxy must know of its shape beyond what
// go-redis routes by: which replicas a failover could promote (view.go),
// and each primary's clock (clock.go).

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Mode is a Redis topology, the value of --redis-mode.
type Mode string

// The topologies.
const (
	ModeStandalone Mode = "standalone"
	ModeCluster    Mode = "cluster"
	ModeSentinel   Mode = "sentinel"
)

// ConnectOptions say how to reach Redis.
type ConnectOptions struct {
	Mode Mode
	// URL is redis:// or rediss://, user and password allowed; more nodes
	// as ?addr=host:port, the Sentinel primary as ?master_name=NAME.
	URL string
	// CAFile is a PEM bundle that verifies a rediss:// server ("": the
	// system roots).
	CAFile string
	// Timeout bounds every dial, read and write.
	Timeout time.Duration
}

// parsedURL is the --redis-url of one mode; one field is set.
type parsedURL struct {
	standalone *redis.Options
	cluster    *redis.ClusterOptions
	sentinel   *redis.FailoverOptions
}

// ParseURL checks rawURL for mode with go-redis's own parser. Errors name
// the offending part, never the URL itself, which may hold a password.
func ParseURL(mode Mode, rawURL string) (tlsOn bool, err error) {
	p, err := parseURL(mode, rawURL)
	return p.tlsConfig() != nil, err
}

func parseURL(mode Mode, rawURL string) (parsedURL, error) {
	var p parsedURL
	var err error
	switch mode {
	case ModeStandalone:
		p.standalone, err = redis.ParseURL(rawURL)
		if err != nil && strings.Contains(err.Error(), "addr") {
			err = fmt.Errorf("%w (several addresses need --redis-mode cluster or sentinel)", err)
		}
	case ModeCluster:
		p.cluster, err = redis.ParseClusterURL(rawURL)
		if err == nil {
			err = clusterPath(rawURL)
		}
	case ModeSentinel:
		p.sentinel, err = redis.ParseFailoverURL(rawURL)
		if err == nil && p.sentinel.MasterName == "" {
			err = errors.New("sentinel mode needs the monitored primary's name: ?master_name=NAME")
		}
	default:
		return p, fmt.Errorf("--redis-mode %q must be %s, %s or %s", mode, ModeStandalone, ModeCluster, ModeSentinel)
	}
	if uerr := (*url.Error)(nil); errors.As(err, &uerr) {
		err = uerr.Err // url.Error repeats the URL, password included
	}
	if err != nil {
		return p, fmt.Errorf("--redis-url (%s mode): %w", mode, err)
	}
	return p, nil
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

func (p parsedURL) tlsConfig() *tls.Config {
	switch {
	case p.standalone != nil:
		return p.standalone.TLSConfig
	case p.cluster != nil:
		return p.cluster.TLSConfig
	case p.sentinel != nil:
		return p.sentinel.TLSConfig
	}
	return nil
}

// Topology is the client of one Redis topology, and what idemproxy knows
// of its shape: the replicas a failover could promote, per primary, and
// the primaries' clocks. Refresh (facts.go) keeps both current.
type Topology struct {
	mode    Mode
	client  redis.UniversalClient
	cluster *redis.ClusterClient // ModeCluster only

	// nodeOptions makes the options of a client of one cluster node or
	// sentinel at addr, with the topology's credentials and TLS.
	nodeOptions func(addr string) *redis.Options
	seeds       []string // cluster: the URL's nodes; sentinel: the sentinels
	masterName  string   // sentinel only
	tlsOn       bool     // rediss://

	kick chan struct{} // a durable write asks for an early refresh

	nodesMu sync.Mutex
	nodes   map[string]*redis.Client // per-address clients, for views and facts

	view   atomic.Pointer[replicaView]
	clocks clocks

	missingMu sync.Mutex
	missing   map[string]bool // store-reset markers acquires found missing
}

// Connect builds the client of o.Mode with idemproxy's connection
// settings: every call must fail fast enough for the client to get
// idemproxy's 503, not Envoy's 504, whatever the topology. It does not
// contact Redis.
func Connect(o ConnectOptions) (*Topology, error) {
	p, err := parseURL(o.Mode, o.URL)
	if err != nil {
		return nil, err
	}
	if tc := p.tlsConfig(); tc != nil && o.CAFile != "" {
		pool, err := loadCA(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("--redis-ca: %w", err)
		}
		tc.RootCAs = pool
	}
	t := &Topology{mode: o.Mode, nodes: map[string]*redis.Client{}, tlsOn: p.tlsConfig() != nil, kick: make(chan struct{}, 1)}
	switch {
	case p.cluster != nil:
		c := p.cluster
		tune(&c.DialTimeout, &c.ReadTimeout, &c.WriteTimeout, &c.PoolTimeout, o.Timeout)
		c.Protocol, c.DisableIdentity = 2, true
		c.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
		c.MinIdleConns, c.MaxRetries = 4, noRetries
		c.DialerRetries, c.DialerRetryTimeout = 1, 10*time.Millisecond
		c.ContextTimeoutEnabled = true
		t.cluster = redis.NewClusterClient(c)
		t.client, t.seeds = t.cluster, c.Addrs
		t.nodeOptions = func(addr string) *redis.Options {
			return nodeOptions(addr, c.Username, c.Password, c.TLSConfig, o.Timeout)
		}
	case p.sentinel != nil:
		c := p.sentinel
		tune(&c.DialTimeout, &c.ReadTimeout, &c.WriteTimeout, &c.PoolTimeout, o.Timeout)
		c.Protocol, c.DisableIdentity = 2, true
		c.MinIdleConns, c.MaxRetries = 4, noRetries
		c.DialerRetries, c.DialerRetryTimeout = 1, 10*time.Millisecond
		c.ContextTimeoutEnabled = true
		t.client = redis.NewFailoverClient(c)
		t.seeds, t.masterName = c.SentinelAddrs, c.MasterName
		t.nodeOptions = func(addr string) *redis.Options {
			return nodeOptions(addr, c.SentinelUsername, c.SentinelPassword, c.TLSConfig, o.Timeout)
		}
	default:
		c := p.standalone
		tune(&c.DialTimeout, &c.ReadTimeout, &c.WriteTimeout, &c.PoolTimeout, o.Timeout)
		// A new connection should cost one round trip, not four: the
		// request path's Redis deadline covers the dial too. RESP2 needs
		// no HELLO, and the client-name and maintenance-notification
		// handshakes are extras we do not use.
		c.Protocol, c.DisableIdentity = 2, true
		c.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
		// A few warm connections, so a quiet period does not make the
		// next requests pay for dials.
		c.MinIdleConns, c.MaxRetries = 4, noRetries
		// go-redis retries a refused dial 5 times, 100 ms apart, by
		// default: 0.5 s of a client's wait spent on a Redis that is
		// gone. Fail at once; the health check notices recovery within
		// its interval.
		c.DialerRetries, c.DialerRetryTimeout = 1, 10*time.Millisecond
		c.ContextTimeoutEnabled = true
		t.client = redis.NewClient(c)
	}
	return t, nil
}

// noRetries turns go-redis's own retries off (MaxRetries -1): after a
// connection error it would send the same script again, and after a
// failover that is another node. An acquire whose first try took the lock
// on the old primary then comes back "in progress" (the retry found
// another request's lock on the new one); nothing gives the first lock
// back, and when the old primary serves again its key is held with nobody
// to settle it (seen in a partition test). A failed call is the
// processor's to retry or refuse: it gives back whatever lock a failed
// acquire may have taken, until every promotable replica confirms it.
const noRetries = -1

// tune sets every timeout to d.
func tune(dial, read, write, pool *time.Duration, d time.Duration) {
	*dial, *read, *write, *pool = d, d, d, d
}

// nodeOptions are the options of a small client of one node (a cluster
// node or a sentinel), used off the request path: views and facts.
func nodeOptions(addr, user, password string, tc *tls.Config, timeout time.Duration) *redis.Options {
	o := &redis.Options{Addr: addr, Username: user, Password: password, Protocol: 2, DisableIdentity: true,
		DialTimeout: timeout, ReadTimeout: timeout, WriteTimeout: timeout, PoolTimeout: timeout,
		PoolSize: 2, MaxRetries: noRetries, DialerRetries: 1, DialerRetryTimeout: 10 * time.Millisecond,
		ContextTimeoutEnabled:    true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}}
	// The topology's TLS settings as they are: go-redis gives its own
	// node and sentinel clients the same.
	o.TLSConfig = tc
	return o
}

// node is the client of the node or sentinel at addr, made on first use.
func (t *Topology) node(addr string) *redis.Client {
	t.nodesMu.Lock()
	defer t.nodesMu.Unlock()
	c := t.nodes[addr]
	if c == nil {
		c = redis.NewClient(t.nodeOptions(addr))
		t.nodes[addr] = c
	}
	return c
}

// Kicked receives when a durable write found the view of replicas out of
// date (a failover happened since): the health check should refresh now,
// not at its next tick.
func (t *Topology) Kicked() <-chan struct{} { return t.kick }

// askRefresh asks for an early refresh, without waiting.
func (t *Topology) askRefresh() {
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// Mode is the topology's mode.
func (t *Topology) Mode() Mode { return t.mode }

// Client is the go-redis client requests go through.
func (t *Topology) Client() redis.UniversalClient { return t.client }

// Close closes every client of the topology.
func (t *Topology) Close() error {
	t.nodesMu.Lock()
	nodes := t.nodes
	t.nodes = map[string]*redis.Client{}
	t.nodesMu.Unlock()
	errs := []error{t.client.Close()}
	for _, c := range nodes {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// loadCA reads PEM certificates into a pool.
func loadCA(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New(path + ": no PEM certificate found")
	}
	return pool, nil
}
