package envoy

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
)

// The checker judges a scenario from two sources that do not depend on
// idemproxy's own account (its metrics): the backend's count of
// executions per key, and what the clients saw (their history).

// timeline is when the nemesis acted, to sort attempts into phases.
type timeline struct {
	cut, healed time.Time // the first cut, the last heal
	steps       []string  // what it did, for the figures
}

// Phases of a scenario: before the first cut, from it to the last heal,
// after it, and the final look once everything settled.
const (
	phaseBefore = iota
	phaseDuring
	phaseAfter
	phaseFinal
	phases
)

var phaseNames = [phases]string{"before", "during", "after", "final"}

// phase is when a attempt started.
func (tl timeline) phase(a attempt) int {
	switch {
	case a.final:
		return phaseFinal
	case tl.cut.IsZero() || a.start.Before(tl.cut):
		return phaseBefore
	case tl.healed.IsZero() || a.start.Before(tl.healed):
		return phaseDuring
	}
	return phaseAfter
}

// answerClasses are the availability figures' columns.
var answerClasses = []string{"200", "409", "503", "err", "other"}

func answerClass(a attempt) string {
	switch a.status {
	case http.StatusOK, http.StatusConflict, http.StatusServiceUnavailable:
		return fmt.Sprint(a.status)
	case -1:
		return "err"
	}
	return "other"
}

// verdict is the checker's finding.
type verdict struct {
	keys, executions, executedKeys int
	// ranTwice are the keys that ran more than once ("key=n").
	ranTwice []string
	// mismatched are keys whose 200 bodies are not all their execution's:
	// a replay that differs from what ran, or more distinct bodies than
	// executions.
	mismatched []string
	// held are the keys idemproxy still refused at the final look (409
	// outcome-unknown, in-progress, response-not-stored; or 503), with
	// what it said.
	held []string
	// heldUnrun counts the held keys that never ran: refused for good
	// although nothing happened.
	heldUnrun int
	// lost are the keys a client got a 200 for whose final look got
	// something else (another execution, or the backend's refusal of a
	// stale fence stored as the outcome), with what it got.
	lost []string
	// answers counts each phase's attempts by answerClass.
	answers [phases]map[string]int
	// lateNotReady counts the side not cut off not ready in the second
	// half of the partition (readiness samples).
	lateNotReady int
	// stories are the histories of the first keys that ran twice,
	// replayed something else, or are held without having run.
	stories []string
}

// check judges history (every attempt, the final look's included) against
// the backend's executions per key.
func check(keys []string, history []attempt, executions map[string]int, tl timeline) verdict {
	v := verdict{keys: len(keys)}
	for i := range v.answers {
		v.answers[i] = map[string]int{}
	}
	byKey := map[string][]attempt{}
	for _, a := range history {
		byKey[a.key] = append(byKey[a.key], a)
		v.answers[tl.phase(a)][answerClass(a)]++
	}
	var unrun []string // stories of held keys that never ran, told last
	for _, k := range keys {
		as, n := byKey[k], executions[k]
		v.executions += n
		if n > 0 {
			v.executedKeys++
		}
		if n > 1 {
			v.ranTwice = append(v.ranTwice, fmt.Sprintf("%s=%d", k, n))
		}
		why := bodiesMismatch(as, n)
		if why != "" {
			v.mismatched = append(v.mismatched, k+": "+why)
		}
		if (n > 1 || why != "") && len(v.stories) < 3 {
			v.stories = append(v.stories, story(k, n, as, tl))
		}
		f := finalOf(as)
		if f == nil {
			continue
		}
		if held(*f) {
			v.held = append(v.held, k+":"+brief(*f))
			if n == 0 {
				if v.heldUnrun++; len(unrun) < 2 {
					unrun = append(unrun, story(k, n, as, tl))
				}
			}
		}
		if seen := firstOK(as); seen != nil && (f.status != http.StatusOK || f.body != seen.body) {
			v.lost = append(v.lost, k+":"+brief(*f))
			if len(v.stories) < 3 {
				v.stories = append(v.stories, story(k, n, as, tl))
			}
		}
	}
	v.stories = append(v.stories, unrun...)
	return v
}

// bodiesMismatch says what is wrong with a key's 200 bodies, or "": every
// replay must carry the body of an execution a client saw, and there can
// be no more distinct bodies (each has its own charge id) than executions.
func bodiesMismatch(as []attempt, executions int) string {
	var executed, all []string
	for _, a := range as {
		if a.status != http.StatusOK {
			continue
		}
		if !slices.Contains(all, a.body) {
			all = append(all, a.body)
		}
		if !a.replayed && !slices.Contains(executed, a.body) {
			executed = append(executed, a.body)
		}
	}
	if len(all) > executions {
		return fmt.Sprintf("%d distinct 200 bodies, %d executions", len(all), executions)
	}
	for _, a := range as {
		if a.status == http.StatusOK && a.replayed && len(executed) > 0 && !slices.Contains(executed, a.body) {
			return "a replay differs from the execution's body"
		}
	}
	return ""
}

// story is one key's attempts in order, times from the first cut: the
// first eight and the last four.
func story(key string, executions int, as []attempt, tl timeline) string {
	as = slices.Clone(as)
	slices.SortFunc(as, func(a, b attempt) int { return a.start.Compare(b.start) })
	var b strings.Builder
	fmt.Fprintf(&b, "%s ran %d times; partition from 0s to %.2fs:", key, executions, tl.healed.Sub(tl.cut).Seconds())
	if len(as) > 12 {
		fmt.Fprintf(&b, "\n  (%d attempts; the first 8 and the last 4)", len(as))
		as = append(as[:8], as[len(as)-4:]...)
	}
	for _, a := range as {
		body := a.body
		if len(body) > 60 {
			body = body[:60]
		}
		fmt.Fprintf(&b, "\n  %+.2fs..%+.2fs %s i%d %d %s replayed=%v %s", a.start.Sub(tl.cut).Seconds(), a.end.Sub(tl.cut).Seconds(),
			phaseNames[tl.phase(a)], a.side+1, a.status, strings.TrimPrefix(a.problem, problem), a.replayed, body)
	}
	return b.String()
}

// held reports whether idemproxy still refused the key: a problem of its
// own (409 outcome-unknown, in-progress, response-not-stored) or a 503.
func held(a attempt) bool { return a.problem != "" || a.status == http.StatusServiceUnavailable }

// brief is an answer in a few words: status and problem type, or status
// and the start of the body.
func brief(a attempt) string {
	if a.problem != "" {
		return fmt.Sprintf("%d %s", a.status, strings.TrimPrefix(a.problem, problem))
	}
	body := a.body
	if len(body) > 40 {
		body = body[:40]
	}
	return fmt.Sprintf("%d %s", a.status, body)
}

// firstOK is the key's first 200 before the final look, or nil.
func firstOK(as []attempt) *attempt {
	var first *attempt
	for i := range as {
		if as[i].status == http.StatusOK && !as[i].final && (first == nil || as[i].end.Before(first.end)) {
			first = &as[i]
		}
	}
	return first
}

// finalOf is the key's final-look attempt, or nil.
func finalOf(as []attempt) *attempt {
	for i := range as {
		if as[i].final {
			return &as[i]
		}
	}
	return nil
}

// availability is one phase's answers as shares: "n=120 200=80% ...".
func (v verdict) availability(phase int) string {
	total := 0
	for _, n := range v.answers[phase] {
		total += n
	}
	var b strings.Builder
	fmt.Fprintf(&b, "n=%d", total)
	for _, c := range answerClasses {
		share := 0.0
		if total > 0 {
			share = 100 * float64(v.answers[phase][c]) / float64(total)
		}
		fmt.Fprintf(&b, " %s=%.0f%%", c, share)
	}
	return b.String()
}

// figures are the verdict as logFigures key/value pairs.
func (v verdict) figures() []any {
	kv := []any{"keys", v.keys, "executions", v.executions, "executed_keys", v.executedKeys,
		"ran_twice", len(v.ranTwice), "replay_mismatch", len(v.mismatched), "held", len(v.held), "held_never_ran", v.heldUnrun, "lost_responses", len(v.lost)}
	for p := range phases {
		kv = append(kv, phaseNames[p], fmt.Sprintf("%q", v.availability(p)))
	}
	return append(kv, "ran_twice_keys", clip(v.ranTwice), "mismatched_keys", clip(v.mismatched), "held_keys", clip(v.held), "lost_keys", clip(v.lost))
}

// clip lists up to 10 entries, and how many more there are.
func clip(list []string) string {
	if len(list) <= 10 {
		return fmt.Sprintf("%q", list)
	}
	return fmt.Sprintf("%q+%d", list[:10], len(list)-10)
}
