package redisstore

import (
	_ "embed"

	"github.com/redis/go-redis/v9"
)

// The scripts live in lua/ so they can be read, linted and run with
// redis-cli on their own. Each is wrapped once: redis.Script keeps its SHA1,
// and Run sends EVALSHA, falling back to EVAL after a SCRIPT FLUSH or a
// restart of Redis.
var (
	//go:embed lua/acquire.lua
	acquireSrc    string
	acquireScript = redis.NewScript(acquireSrc)

	//go:embed lua/renew.lua
	renewSrc    string
	renewScript = redis.NewScript(renewSrc)

	//go:embed lua/complete.lua
	completeSrc    string
	completeScript = redis.NewScript(completeSrc)

	//go:embed lua/release.lua
	releaseSrc    string
	releaseScript = redis.NewScript(releaseSrc)

	//go:embed lua/abandon.lua
	abandonSrc    string
	abandonScript = redis.NewScript(abandonSrc)

	//go:embed lua/inspect.lua
	inspectSrc    string
	inspectScript = redis.NewScript(inspectSrc)
)
