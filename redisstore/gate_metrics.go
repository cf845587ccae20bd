package redisstore

import (
	"github.com/prometheus/client_golang/prometheus"
)

// gateGauges show what the Gate learnt about Redis, so an
// alert can fire on an evicting or forgetful Redis.
type gateGauges struct {
	ready           prometheus.Gauge
	evicting        prometheus.Gauge
	persistence     *prometheus.GaugeVec
	primaries       *prometheus.GaugeVec
	shortOfReplicas prometheus.Gauge
	channelsRefused prometheus.Gauge
	storeResets     prometheus.Counter
	heldPrimaries   prometheus.Gauge
}

// persistenceKinds are the values of idemproxy_redis_persistence's label.
var persistenceKinds = []string{"aof", "rdb", "none", "unknown"}

func newGateGauges(reg prometheus.Registerer) (gateGauges, error) {
	g := gateGauges{
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "idemproxy_ready",
			Help: "1 while this replica is ready (/readyz 200, gRPC health SERVING): Redis answers and may be trusted.",
		}),
		evicting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "idemproxy_redis_evicting",
			Help: "1 while Redis's maxmemory-policy is not noeviction (keyed requests are refused unless --allow-evicting-redis).",
		}),
		persistence: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "idemproxy_redis_persistence",
			Help: "1 for how Redis persists its data: aof, rdb, none (a restart forgets every key) or unknown.",
		}, []string{"kind"}),
		primaries: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "idemproxy_redis_primaries",
			Help: "Redis primaries at the last health check: serving, or down (unreachable, a replica, or cluster_state not ok); one outside a cluster.",
		}, []string{"state"}),
		channelsRefused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "idemproxy_redis_channels_refused",
			Help: "Serving primaries whose ACL user may not publish on idemproxy's channels (no &PREFIX*): waiting duplicates wake only on their re-check.",
		}),
		shortOfReplicas: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "idemproxy_redis_primaries_short_of_replicas",
			Help: "Serving primaries with fewer replicas connected than --redis-min-replicas: new keys there are refused with 503.",
		}),
		storeResets: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "idemproxy_store_resets_total",
			Help: "Store resets this process noted: a Redis primary that lost its records (restart without persistence, flush, failover to a replica without the data).",
		}),
		heldPrimaries: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "idemproxy_store_reset_held_primaries",
			Help: "Redis primaries held after a store reset: their keys get 503 store-reset until --retention has passed or an operator acknowledges (POST /admin/v1/store-resets/ack).",
		}),
	}
	for _, c := range []prometheus.Collector{g.ready, g.evicting, g.persistence, g.primaries, g.shortOfReplicas, g.channelsRefused, g.storeResets, g.heldPrimaries} {
		if err := reg.Register(c); err != nil {
			return gateGauges{}, err
		}
	}
	return g, nil
}

func (g gateGauges) setEvicting(on bool) {
	v := 0.0
	if on {
		v = 1
	}
	g.evicting.Set(v)
}

func (g gateGauges) setPersistence(kind string) {
	for _, k := range persistenceKinds {
		v := 0.0
		if k == kind {
			v = 1
		}
		g.persistence.WithLabelValues(k).Set(v)
	}
}

func (g gateGauges) setPrimaries(serving, down int) {
	g.primaries.WithLabelValues("serving").Set(float64(serving))
	g.primaries.WithLabelValues("down").Set(float64(down))
}
