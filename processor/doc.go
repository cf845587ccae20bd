// Package processor decides, per HTTP request that Envoy streams to it over
// ext_proc, whether the request runs upstream, waits (409), is refused (422)
// or is answered from a stored response, and stores the response it lets
// through.
//
// # The request path
//
// One keyed request, from the stream to the store and back, file and
// function per step:
//
//  1. server.go, Server.Process: the stream's loop. Receives each message,
//     has the stream's exchange (exchange.go) answer it with exactly one
//     reply, adds the decision's dynamic metadata (observe.go, annotate),
//     sends it, and notes that the request may now be upstream (sent).
//     When the stream ends, however it ends, finish (settle.go) runs.
//  2. exchange.go, exchange.handle: one method per message kind.
//  3. exchange.go, onRequestHeaders and screen: reads the key headers
//     (key.go, parseKey via singleKey), the scope (scope.go, readScope,
//     identity, scopeParts; key.go, storeKey) and the room left for the
//     fence (headers.go, headroom). A request that does not take part, or
//     cannot, gets its verdict here (verdict.go) and its reply at once
//     (step 7, phaseScreen). A request with a body waits for it:
//     onRequestBody.
//  4. decide.go, decide (phaseHeaders or phaseBody): the store gate
//     (StoreGate), the fingerprint (key.go, fingerprint), the owner token,
//     and the first acquire (acquire), through the timed, observed store
//     (store.go, timedStore) to the Store: redisstore's (*Store).Acquire,
//     which runs acquire.lua's grant().
//  5. verdict.go, judge: the decision, with no I/O. The key is granted
//     (stepGrant), a duplicate waits (stepWait), or the record that holds
//     the key answers it (existing: replay, 409, 422), or the store failed
//     (storeFailure: 503, or fail-open).
//  6. Only when told to: wait.go, wait and waitOn hold a duplicate until
//     its key settles (Watcher, sharedReads.peek), and return the last look
//     for decide to judge again. decide.go, grant makes the request the
//     key's owner: the watchdog (watchdog.go) and, during
//     --scope-legacy-until, the previous scope's record (fromLegacy).
//  7. reroute.go, viaEndpoint: a replay that an immediate response cannot
//     reproduce (ended with trailers; every replay with
//     Config.ReplayAllViaEndpoint) gets a single-use token: the one the
//     acquire issued (idem.Claim.Replay, asked for by replayAsk), else
//     one from Replays (redisstore's IssueReplay). reply.go, reply:
//     everything the verdict implies, once: the outcome's metric, span
//     attribute and metadata (observe.go, decided, fenced), its log
//     line, shadow mode, and the
//     immediate response (replies.go), the CONTINUE that re-routes the
//     request to the replay endpoint (reroute.go, rerouted; package
//     replay serves it), or the phase's CONTINUE with the fence header
//     (replies.go, Server.fence).
//  8. response.go, onResponseHeaders, onResponseBody, onResponseTrailers:
//     the upstream's answer. Envoy's attempt count first (attempts.go,
//     retried): a response Envoy retried upstream is counted and logged,
//     and its key is never given back when an earlier attempt may have
//     run. A status not stored, or a local reply, releases
//     or abandons the key (settle.go, release, abandon); origin.go tells a
//     local reply by response.code_details, or without it by its headers,
//     and envoycheck.go notes a config that lacks what the promise needs
//     (also from protocol_config, on the first message); otherwise the
//     response is collected and stored (settle_complete.go, complete,
//     settle.go, settle, through timedStore.Complete) before its last chunk
//     goes out.
//  9. settle.go, finish: at the stream's end, retries a settling write that
//     failed in band, gives back a lock that never went upstream, and
//     marks an outcome unknown when the request went upstream unanswered.
//  10. pending.go, pending_run.go: a response the store did not take within
//     --finalize-timeout is kept and retried in the background, until the
//     lease would end with its body, then as its status alone; Drain
//     settles what is left at shutdown.
package processor
