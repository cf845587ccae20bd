package processor

// The settings that are a choice between names. Each is defined once here,
// with the names it accepts: the flags (cmd/idemproxy) and a route's
// metadata (policy.go) parse them with the same UnmarshalText, so both
// accept the same words and refuse others with the same text.

import (
	"errors"
	"fmt"
	"strings"
)

// InProgress is what a duplicate of a key still in progress (same
// fingerprint) gets: --in-progress, per route x-idemproxy-in-progress.
type InProgress int

const (
	// InProgressConflict answers 409 in-progress at once, with Retry-After.
	InProgressConflict InProgress = iota
	// InProgressWait holds the duplicate until the first request settles
	// its key, then answers as a later retry would (wait.go).
	InProgressWait
)

var inProgressNames = [...]string{InProgressConflict: "conflict", InProgressWait: "wait"}

// String is the setting's name.
func (v InProgress) String() string { return enumName(inProgressNames[:], int(v)) }

// MarshalText is the setting's name.
func (v InProgress) MarshalText() ([]byte, error) { return []byte(v.String()), nil }

// UnmarshalText accepts conflict or wait.
func (v *InProgress) UnmarshalText(b []byte) error {
	n, err := parseEnum(inProgressNames[:], b)
	if err == nil {
		*v = InProgress(n)
	}
	return err
}

// Mode says whether the processor enforces its decisions or only counts
// them: --mode, per route x-idemproxy-mode (shadow.go).
type Mode int

const (
	// ModeEnforce refuses and replays as decided.
	ModeEnforce Mode = iota
	// ModeShadow decides and stores as usual but passes upstream what it
	// would have answered itself, counted.
	ModeShadow
)

var modeNames = [...]string{ModeEnforce: "enforce", ModeShadow: "shadow"}

// String is the mode's name.
func (v Mode) String() string { return enumName(modeNames[:], int(v)) }

// MarshalText is the mode's name.
func (v Mode) MarshalText() ([]byte, error) { return []byte(v.String()), nil }

// UnmarshalText accepts enforce or shadow.
func (v *Mode) UnmarshalText(b []byte) error {
	n, err := parseEnum(modeNames[:], b)
	if err == nil {
		*v = Mode(n)
	}
	return err
}

// ErrorFormat is the shape of the bodies of idemproxy's own errors:
// --error-format, per route x-idemproxy-error-format (errorshape.go).
type ErrorFormat int

const (
	// ErrorFormatProblem is RFC 9457 application/problem+json.
	ErrorFormatProblem ErrorFormat = iota
	// ErrorFormatStripe is Stripe's {"error":{...}} envelope, with the
	// statuses and codes Stripe's SDKs retry as they should.
	ErrorFormatStripe
	// ErrorFormatTemplate is the operator's JSON template
	// (--error-template-file).
	ErrorFormatTemplate
)

var errorFormatNames = [...]string{ErrorFormatProblem: "problem", ErrorFormatStripe: "stripe", ErrorFormatTemplate: "template"}

// String is the format's name.
func (v ErrorFormat) String() string { return enumName(errorFormatNames[:], int(v)) }

// MarshalText is the format's name.
func (v ErrorFormat) MarshalText() ([]byte, error) { return []byte(v.String()), nil }

// UnmarshalText accepts problem, stripe or template.
func (v *ErrorFormat) UnmarshalText(b []byte) error {
	n, err := parseEnum(errorFormatNames[:], b)
	if err == nil {
		*v = ErrorFormat(n)
	}
	return err
}

// OnUnknown is the policy for unknown outcomes (the request went upstream
// and no final response was seen, or its owner vanished): --on-unknown.
type OnUnknown int

const (
	// OnUnknownHold marks the key an unknown outcome, refused (409
	// outcome-unknown) for the retention, until an operator clears it: a
	// request never runs twice.
	OnUnknownHold OnUnknown = iota
	// OnUnknownRerunAfterTTL is the opt-in weaker policy: the lock is left
	// to expire after the lock TTL, and a retry after that takes the key
	// over and runs the request again, possibly a second time.
	OnUnknownRerunAfterTTL
)

var onUnknownNames = [...]string{OnUnknownHold: "hold", OnUnknownRerunAfterTTL: "rerun-after-ttl"}

// errExpireRemoved refuses the old name of the weaker policy by name: it
// must be chosen knowingly, under the name that says what it does.
var errExpireRemoved = errors.New(`expire is no longer accepted: it let a request whose outcome was unknown run again after the lock TTL. ` +
	`The default, hold, never runs it twice; to keep the old behaviour knowingly, say --on-unknown rerun-after-ttl`)

// String is the policy's name.
func (v OnUnknown) String() string { return enumName(onUnknownNames[:], int(v)) }

// MarshalText is the policy's name.
func (v OnUnknown) MarshalText() ([]byte, error) { return []byte(v.String()), nil }

// UnmarshalText accepts hold or rerun-after-ttl.
func (v *OnUnknown) UnmarshalText(b []byte) error {
	if string(b) == "expire" {
		return errExpireRemoved
	}
	n, err := parseEnum(onUnknownNames[:], b)
	if err == nil {
		*v = OnUnknown(n)
	}
	return err
}

// rerun says whether a key left with an unknown outcome may be taken over
// once its lease runs out (idem.Lease.Takeover).
func (v OnUnknown) rerun() bool { return v == OnUnknownRerunAfterTTL }

// parseEnum returns the index of b among names. Its error starts with
// the value, so each caller prefixes where it came from (a flag, a
// metadata key).
func parseEnum(names []string, b []byte) (int, error) {
	for i, name := range names {
		if string(b) == name {
			return i, nil
		}
	}
	return 0, fmt.Errorf("%q must be %s or %s", b, strings.Join(names[:len(names)-1], ", "), names[len(names)-1])
}

// enumName is the name of value n, or a placeholder for a value that is
// none of them.
func enumName(names []string, n int) string {
	if !validEnum(names, n) {
		return fmt.Sprintf("invalid(%d)", n)
	}
	return names[n]
}

// checkEnums reports a Config choice that is none of the names: one set
// by conversion from a number, not by UnmarshalText.
func (c Config) checkEnums() error {
	if !validEnum(inProgressNames[:], int(c.InProgress)) || !validEnum(modeNames[:], int(c.Mode)) ||
		!validEnum(onUnknownNames[:], int(c.OnUnknown)) || !validEnum(errorFormatNames[:], int(c.ErrorFormat)) {
		return fmt.Errorf("in-progress %v, mode %v, on-unknown %v and error format %v must be valid choices", c.InProgress, c.Mode, c.OnUnknown, c.ErrorFormat)
	}
	return nil
}

func validEnum(names []string, n int) bool { return n >= 0 && n < len(names) }
