package envoy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/netlab"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// The partition suite runs every program on hosts of its own, in network
// namespaces (internal/testenv/netlab): the Redis nodes r1..rN, two
// idemproxy+Envoy sides i1 and i2, the backend b1, and c1, where the
// test's clients and Redis helpers connect from. A partition is then a
// real one: iptables drops packets between hosts while every process runs.
// Each host has its own ports, so everything listens on the shipped ones.
const (
	partitionEnvoyPort   = 10000
	partitionEnvoyAdmin  = 9901
	partitionGRPCAddr    = "127.0.0.1:50051"
	partitionAdminAddr   = "127.0.0.1:9090"
	partitionBackendPort = 8081
)

// partitionLab is one topology's hosts and long-lived processes.
type partitionLab struct {
	lab      *netlab.Lab
	client   *netlab.Host   // c1: the clients and the test's Redis helpers
	backend  *netlab.Host   // b1
	redis    []*netlab.Host // r1..r3 (Sentinel) or r1..r6 (Cluster)
	sideHost [2]*netlab.Host
	http     *http.Client // from c1
	mode     string       // idemproxy's --redis-mode
	url      string       // idemproxy's --redis-url
	sentinel *redistopo.Sentinel
	cluster  *redistopo.Cluster
}

// newPartitionLab makes the hosts, starts the backend and n Redis hosts'
// worth of the topology (mode sentinel: 3, cluster: 6).
func newPartitionLab(t *testing.T, mode string) *partitionLab {
	t.Helper()
	p := &partitionLab{lab: netlab.New(t), mode: mode}
	p.client = p.lab.AddHost(t, "c1")
	p.backend = p.lab.AddHost(t, "b1")
	p.sideHost = [2]*netlab.Host{p.lab.AddHost(t, "i1"), p.lab.AddHost(t, "i2")}
	n := map[string]int{"sentinel": 3, "cluster": 6}[mode]
	var places []redistopo.Place
	for i := range n {
		h := p.lab.AddHost(t, fmt.Sprintf("r%d", i+1))
		p.redis, places = append(p.redis, h), append(places, h.Place(p.client))
	}
	p.http = p.client.HTTPClient(10*time.Second, 256)
	t.Cleanup(p.http.CloseIdleConnections)
	b := p.backend.Start(t, testenv.Command{Name: "backend", Path: filepath.Join(binDir, "backend"),
		Args: []string{"--addr", p.backend.Addr(partitionBackendPort), "--slow-delay", "5s"}})
	b.Ready(t, 15*time.Second, testenv.HTTPOK(p.http, p.backendURL()+"/healthz"))
	switch mode {
	case "sentinel":
		// Down after 1 s, as environment.md measured: a failover in about
		// 2 s, so a 10 s partition has its failover and a flap may too.
		p.sentinel = redistopo.NewSentinelWith(t, redistopo.SentinelOptions{Places: places,
			DownAfter: time.Second, FailoverTimeout: 3 * time.Second})
		p.url = sentinelURL(p.sentinel)
	case "cluster":
		p.cluster = redistopo.NewClusterWith(t, redistopo.ClusterOptions{Places: places})
		p.url = clusterURL(p.cluster)
	default:
		t.Fatalf("no partition lab for mode %q", mode)
	}
	return p
}

func (p *partitionLab) backendURL() string {
	return "http://" + p.backend.Addr(partitionBackendPort)
}

// redisHost is the host a Redis server of the topology runs on.
func (p *partitionLab) redisHost(s *redistopo.Server) *netlab.Host {
	for _, h := range p.redis {
		if strings.HasPrefix(s.Addr, h.IP+":") {
			return h
		}
	}
	return nil
}

// waitHealthy waits until the topology is whole again: replicas synced,
// sentinels agreeing, every cluster slot served.
func (p *partitionLab) waitHealthy(t *testing.T) {
	t.Helper()
	if p.sentinel != nil {
		require.NoError(t, p.sentinel.WaitHealthy(t.Context()), "the Sentinel topology heals")
		return
	}
	require.NoError(t, p.cluster.WaitHealthy(t.Context()), "the cluster heals")
}

// promotions counts the failovers the topology's logs show so far.
func (p *partitionLab) promotions() int {
	if p.sentinel != nil {
		return sentinelPromotions(p.sentinel)()
	}
	return clusterPromotions(p.cluster)()
}

// side is one idemproxy and the Envoy in front of it, on one host.
type side struct {
	name string
	host *netlab.Host
	url  string // Envoy's listener, reached from c1
}

// startSides starts idemproxy (in p's mode, on p's Redis, shipped defaults
// but for args) and Envoy (the shipped envoy.yaml) on i1 and i2.
func (p *partitionLab) startSides(t *testing.T, args []string) [2]*side {
	t.Helper()
	var sides [2]*side
	for i, h := range p.sideHost {
		startPartitionIdemproxy(t, h, p.mode, p.url, args)
		startPartitionEnvoy(t, h, p.backend)
		sides[i] = &side{name: h.Name, host: h, url: "http://" + h.Addr(partitionEnvoyPort)}
	}
	return sides
}

// startPartitionIdemproxy runs idemproxy on h and waits until it is ready.
func startPartitionIdemproxy(t *testing.T, h *netlab.Host, mode, url string, args []string) {
	t.Helper()
	local := h.HTTPClient(2*time.Second, 1)
	t.Cleanup(local.CloseIdleConnections)
	p := h.Start(t, testenv.Command{Name: "idemproxy", Path: filepath.Join(binDir, "idemproxy"), Args: append([]string{
		"--grpc-addr", partitionGRPCAddr, "--admin-addr", partitionAdminAddr, "--redis-mode", mode, "--redis-url", url,
		"--log-level", "info", "--auth-token-file", e2eTokenFile}, args...)})
	p.Ready(t, 30*time.Second, testenv.HTTPOK(local, "http://"+partitionAdminAddr+"/readyz"))
}

// startPartitionEnvoy runs Envoy with the shipped envoy.yaml on h: its
// listener on every address of h, its backend b1.
func startPartitionEnvoy(t *testing.T, h, backend *netlab.Host) {
	t.Helper()
	bin := testenv.EnvoyBin(t)
	loopback := func(port int) string { return fmt.Sprintf("{ address: 127.0.0.1, port_value: %d }", port) }
	cfg := testenv.WriteEnvoyConfig(t, "envoy.yaml", testenv.EnvoyConfig{
		Listener: partitionEnvoyPort, Admin: partitionEnvoyAdmin, ExtProc: partitionGRPCAddr,
		Backend: backend.Addr(partitionBackendPort), AuthToken: e2eToken,
		Edits: [][2]string{
			{loopback(partitionEnvoyPort), fmt.Sprintf("{ address: 0.0.0.0, port_value: %d }", partitionEnvoyPort)},
			{loopback(partitionBackendPort), fmt.Sprintf("{ address: %s, port_value: %d }", backend.IP, partitionBackendPort)},
		}})
	local := h.HTTPClient(2*time.Second, 1)
	t.Cleanup(local.CloseIdleConnections)
	p := h.Start(t, testenv.EnvoyCommand("envoy", bin, cfg, "warn"))
	p.Ready(t, testenv.EnvoyReadyTimeout, testenv.HTTPOK(local, fmt.Sprintf("http://127.0.0.1:%d/ready", partitionEnvoyAdmin)))
}

// executions reads the backend's executions per key (GET /stats): what
// ran, whatever idemproxy says.
func (p *partitionLab) executions(t *testing.T) map[string]int {
	t.Helper()
	resp, err := p.http.Get(p.backendURL() + "/stats")
	require.NoError(t, err)
	defer resp.Body.Close()
	var st backendStats
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&st))
	return st.Keys
}
