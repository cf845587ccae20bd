package redisstore

import (
	_ "embed"

	"github.com/redis/go-redis/v9"
)

// The scripts live in lua/ so they can be read, linted and run with
// redis-cli on their own; each file's header lists its KEYS, ARGV and
// replies. Each is wrapped once: redis.Script keeps its SHA1, so exec
// (exec.go) sends EVALSHA, and EVAL when Redis has not loaded it.
var (
	//go:embed lua/acquire.lua
	acquireSrc    string
	acquireScript = &script{redis.NewScript(acquireSrc), durableGrant}

	//go:embed lua/peek.lua
	peekSrc    string
	peekScript = &script{redis.NewScript(peekSrc), notDurable}

	//go:embed lua/renew.lua
	renewSrc    string
	renewScript = &script{redis.NewScript(renewSrc), notDurable}

	//go:embed lua/complete.lua
	completeSrc    string
	completeScript = &script{redis.NewScript(completeSrc), durableWrite}

	//go:embed lua/release.lua
	releaseSrc    string
	releaseScript = &script{redis.NewScript(releaseSrc), durableDelete}

	//go:embed lua/abandon.lua
	abandonSrc    string
	abandonScript = &script{redis.NewScript(abandonSrc), notDurable}

	//go:embed lua/replay_issue.lua
	replayIssueSrc    string
	replayIssueScript = &script{redis.NewScript(replayIssueSrc), notDurable}

	//go:embed lua/replay_take.lua
	replayTakeSrc    string
	replayTakeScript = &script{redis.NewScript(replayTakeSrc), notDurable}

	//go:embed lua/inspect.lua
	inspectSrc    string
	inspectScript = &script{redis.NewScript(inspectSrc), notDurable}
)

// script is one script of lua/ and when its write must reach replicas.
type script struct {
	*redis.Script
	durability durability
}

// durability says whether a script's write waits for replicas (durable.go)
// under the store's Options; Store.waits reads it.
type durability uint8

const (
	// notDurable scripts never wait: renew, abandon, and the reads.
	notDurable durability = iota
	// durableWrite (complete) waits with AllReplicas or MinReplicas.
	durableWrite
	// durableGrant (acquire) is a durableWrite, refused before it is sent
	// when it could not be made durable (idem.ErrNotTaken): a lock written
	// but refused would need giving back.
	durableGrant
	// durableDelete (release) waits with AllReplicas only: a deleted lock
	// that a failover brought back would hold its key for the retention
	// with nobody to settle it.
	durableDelete
)

// markerScript writes store-reset markers (marker.go); only the health
// check runs it, directly on each primary, never batched.
var (
	//go:embed lua/marker.lua
	markerSrc    string
	markerScript = &script{redis.NewScript(markerSrc), notDurable}
)
