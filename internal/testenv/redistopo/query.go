package redistopo

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// do runs one command on addr over a client of its own, closed at once,
// so the waits here leave no pools behind and never retry. dial is the
// topology's way to its servers (Place.Dial), nil for loopback.
func do(ctx context.Context, dial Dialer, addr string, args ...any) (any, error) {
	c := redis.NewClient(clientOptions(dial, addr))
	defer c.Close()
	return c.Do(ctx, args...).Result()
}

// text runs a command whose reply is a string (INFO, CLUSTER INFO/NODES).
func text(ctx context.Context, dial Dialer, addr string, args ...any) (string, error) {
	v, err := do(ctx, dial, addr, args...)
	if err != nil {
		return "", fmt.Errorf("%s %v: %w", addr, args, err)
	}
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("%s %v: reply %T, not a string", addr, args, v)
	}
	return s, nil
}

// field reads "name:value" out of an INFO-style reply.
func field(info, name string) string {
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return ""
}

// role returns "master" or "slave" and, for a replica, whether its link
// to the primary is up.
func role(ctx context.Context, dial Dialer, addr string) (string, bool, error) {
	info, err := text(ctx, dial, addr, "INFO", "replication")
	if err != nil {
		return "", false, err
	}
	return field(info, "role"), field(info, "master_link_status") == "up", nil
}

// replicasOnline fails while a primary at addr lists a replica that is not
// yet online (still loading the first sync); a replica's addr passes.
func replicasOnline(ctx context.Context, dial Dialer, addr string) error {
	info, err := text(ctx, dial, addr, "INFO", "replication")
	if err != nil {
		return err
	}
	if field(info, "role") != "master" {
		return nil
	}
	for _, line := range strings.Split(info, "\n") {
		if strings.HasPrefix(line, "slave") && strings.Contains(line, "state=") && !strings.Contains(line, "state=online") {
			return fmt.Errorf("%s: replica not online yet: %s", addr, strings.TrimSpace(line))
		}
	}
	return nil
}

// waitLinked waits until the replica at addr is synced with its primary.
func waitLinked(ctx context.Context, dial Dialer, addr string) error {
	r, up, err := role(ctx, dial, addr)
	switch {
	case err != nil:
		return err
	case r != "slave" || !up:
		return fmt.Errorf("%s: role %s, link up %v", addr, r, up)
	}
	return nil
}

// splitAddr splits host:port with a numeric port.
func splitAddr(addr string) (string, int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	p, err := strconv.Atoi(port)
	return host, p, err
}

// subdir makes dir/name for one server of a topology ("" leaves the choice
// to StartServer).
func subdir(dir, name string) string {
	if dir == "" {
		return ""
	}
	path := filepath.Join(dir, name)
	if os.MkdirAll(path, 0o700) != nil {
		return ""
	}
	return path
}

// asMap reads a RESP2 flat list or RESP3 map reply as strings.
func asMap(v any) (map[string]string, error) {
	out := map[string]string{}
	switch r := v.(type) {
	case map[any]any:
		for k, v := range r {
			out[fmt.Sprint(k)] = fmt.Sprint(v)
		}
	case []any:
		for i := 0; i+1 < len(r); i += 2 {
			out[fmt.Sprint(r[i])] = fmt.Sprint(r[i+1])
		}
	default:
		return nil, fmt.Errorf("unexpected sentinel reply %T", v)
	}
	return out, nil
}
