package processor

// The operator's error template (--error-template-file): any JSON document
// whose strings may hold placeholders. A string that is exactly one
// placeholder becomes that value with its JSON type (status and
// retry_after numbers, retry_after null when there is none); a
// placeholder inside a longer string is replaced by its text. The
// template is parsed once, at start, and every answer is marshalled from
// the parsed tree, so a detail with quotes or newlines is escaped and the
// body is always valid JSON.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
)

// Placeholder names. retry-after is accepted as a spelling of retry_after.
const (
	tplStatus     = "status"
	tplType       = "type"
	tplTitle      = "title"
	tplDetail     = "detail"
	tplRetryAfter = "retry_after"
)

var placeholder = regexp.MustCompile(`\{\{\s*([A-Za-z_-]+)\s*\}\}`)

// ErrorTemplate is a parsed --error-template-file.
type ErrorTemplate struct {
	root any
}

// ParseErrorTemplate checks a template: one JSON value, placeholders only
// of the known names.
func ParseErrorTemplate(b []byte) (*ErrorTemplate, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var root any
	if err := dec.Decode(&root); err != nil {
		return nil, fmt.Errorf("not JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("not JSON: more than one value")
	}
	var errs []error
	walkStrings(root, func(s string) {
		for _, m := range placeholder.FindAllStringSubmatch(s, -1) {
			if tplName(m[1]) == "" {
				errs = append(errs, fmt.Errorf("unknown placeholder %s (known: {{status}}, {{type}}, {{title}}, {{detail}}, {{retry_after}})", m[0]))
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &ErrorTemplate{root: root}, nil
}

// tplName is the canonical name of a placeholder, "" if unknown.
func tplName(n string) string {
	switch n {
	case tplStatus, tplType, tplTitle, tplDetail, tplRetryAfter:
		return n
	case "retry-after":
		return tplRetryAfter
	}
	return ""
}

func walkStrings(v any, f func(string)) {
	switch v := v.(type) {
	case string:
		f(v)
	case []any:
		for _, e := range v {
			walkStrings(e, f)
		}
	case map[string]any:
		for _, e := range v {
			walkStrings(e, f)
		}
	}
}

// render fills the template for r. Keys come out sorted (encoding/json's
// order for objects); JSON clients do not depend on key order.
func (t *ErrorTemplate) render(r refused) []byte {
	vals := map[string]any{tplStatus: r.p.status, tplType: problemBase + r.p.slug, tplTitle: r.p.title, tplDetail: r.detail, tplRetryAfter: nil}
	if n, err := strconv.Atoi(r.retryAfter); err == nil {
		vals[tplRetryAfter] = n
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	// Encoding numbers, strings, nil and the containers of a parsed
	// document cannot fail.
	_ = enc.Encode(fill(t.root, vals))
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

// fill is v with its placeholders replaced.
func fill(v any, vals map[string]any) any {
	switch v := v.(type) {
	case string:
		if m := placeholder.FindStringSubmatch(v); m != nil && m[0] == v {
			return vals[tplName(m[1])]
		}
		return placeholder.ReplaceAllStringFunc(v, func(s string) string {
			switch x := vals[tplName(placeholder.FindStringSubmatch(s)[1])].(type) {
			case nil:
				return ""
			case string:
				return x
			default:
				return fmt.Sprint(x)
			}
		})
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = fill(e, vals)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[k] = fill(e, vals)
		}
		return out
	}
	return v
}
