package processor

import (
	"fmt"
	"strconv"
	"strings"
)

// StatusSet is a set of HTTP statuses, written as a comma list of codes and
// classes ("5xx,408,425,429").
type StatusSet struct {
	classes [6]bool
	codes   map[int]bool
	text    string
}

// ParseStatusSet parses a comma list of three-digit codes and classes (1xx..5xx).
func ParseStatusSet(s string) (StatusSet, error) {
	set := StatusSet{codes: map[int]bool{}, text: s}
	for _, part := range strings.Split(s, ",") {
		part = strings.ToLower(strings.TrimSpace(part))
		switch {
		case part == "":
			continue
		case len(part) == 3 && strings.HasSuffix(part, "xx") && part[0] >= '1' && part[0] <= '5':
			set.classes[part[0]-'0'] = true
		default:
			code, err := strconv.Atoi(part)
			if err != nil || code < 100 || code > 599 {
				return StatusSet{}, fmt.Errorf("status %q is neither a code 100-599 nor a class like 5xx", part)
			}
			set.codes[code] = true
		}
	}
	return set, nil
}

// MustParseStatusSet is ParseStatusSet for constants.
func MustParseStatusSet(s string) StatusSet {
	set, err := ParseStatusSet(s)
	if err != nil {
		panic(err)
	}
	return set
}

// Contains reports whether status is in the set.
func (s StatusSet) Contains(status int) bool {
	if status >= 100 && status <= 599 && s.classes[status/100] {
		return true
	}
	return s.codes[status]
}

// String returns the set as it was written.
func (s StatusSet) String() string { return s.text }
