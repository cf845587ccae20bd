package redisstore

// Each primary's clock, as the health check reads it with TIME. An acquire
// carries a deadline on the clock of the primary that runs it (lua/
// acquire.lua, ARGV[9]): a lock the script would create after idemproxy
// stopped waiting for it (the call timed out and the client got a 503)
// is refused instead. Such a late script is real: a command sent while the
// network was cut arrives by TCP retransmission on the abandoned
// connection, after the release idemproxy sent in its place found nothing;
// a lock created then would never be renewed, and its key would read as an
// unknown outcome for the whole retention, though nothing ran.

import (
	"sync"
	"time"
)

// clockMargin is subtracted from every deadline besides the measurement's
// own uncertainty: a script that runs within it of the deadline is refused
// too (a 503 for a request idemproxy was about to give up on anyway).
const clockMargin = 5 * time.Millisecond

// otherNodeMargin is added when a primary's own clock was never read (a
// replica promoted since the last health check): its clock is taken to be
// the most recently read one, give or take this.
const otherNodeMargin = 50 * time.Millisecond

// clockSample is how far a Redis clock was ahead of ours, within
// uncertainty.
type clockSample struct {
	offset, uncertainty time.Duration
}

// clocks keeps the latest sample per primary address ("" outside a
// cluster) and the latest of any.
type clocks struct {
	mu     sync.Mutex
	byAddr map[string]clockSample
	last   *clockSample
}

// observe records a TIME reply redisNow, read by a call sent at sent and
// answered at recv (our clock).
func (c *clocks) observe(addr string, sent, recv, redisNow time.Time) {
	rtt := recv.Sub(sent)
	s := clockSample{offset: redisNow.Sub(sent.Add(rtt / 2)), uncertainty: rtt/2 + time.Millisecond}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byAddr == nil {
		c.byAddr = map[string]clockSample{}
	}
	c.byAddr[addr] = s
	c.last = &s
}

// deadline converts our deadline into milliseconds on the clock of the
// primary at addr, early rather than late. ok is false when no clock was
// ever read: the script then has no deadline.
func (c *clocks) deadline(addr string, local time.Time) (ms int64, ok bool) {
	c.mu.Lock()
	s, found := c.byAddr[addr]
	if !found && c.last != nil {
		s, found = *c.last, true
		s.uncertainty += otherNodeMargin
	}
	c.mu.Unlock()
	if !found {
		return 0, false
	}
	return local.Add(s.offset - s.uncertainty - clockMargin).UnixMilli(), true
}
