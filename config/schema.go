package config

import (
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// configSchema is the key tree of Config, derived once from its json tags, so
// unknown keys can be reported with their full path rather than only their
// last element as encoding/json does.
var configSchema = schemaOf(reflect.TypeFor[Config]())

// defaultMaxItems bounds a list whose field has no maxItems tag.
const defaultMaxItems = 1024

type schema struct {
	fields   map[string]*schema // object keys; nil for scalars
	elem     *schema            // list element
	maxItems int                // a list's most entries, from its maxItems tag
	duration bool               // a Duration leaf, checked with its path
}

func schemaOf(t reflect.Type) *schema {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Slice:
		return &schema{elem: schemaOf(t.Elem())}
	case reflect.Struct:
		if t == reflect.TypeFor[Duration]() {
			return &schema{duration: true}
		}
		s := &schema{fields: map[string]*schema{}}
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "" || name == "-" {
				continue
			}
			fs := schemaOf(f.Type)
			if fs.elem != nil {
				// Every list is bounded, so that a huge config is refused
				// before it is decoded and held (its length is checked on
				// the generic document). TestEveryListHasACap wants the
				// tag; a list without one still gets a bound.
				fs.maxItems = defaultMaxItems
				if n, err := strconv.Atoi(f.Tag.Get("maxItems")); err == nil && n > 0 {
					fs.maxItems = n
				}
			}
			s.fields[name] = fs
		}
		return s
	}
	return &schema{}
}

// problems are what a walk of a document against the schema finds: keys
// the schema does not know and values it can check better than the JSON
// decoder (durations, list lengths), each with its full path.
type problems struct {
	unknown []string // paths, e.g. "blocks.polcy"
	bad     []string // "health.quietPeriod: want a duration such as …"
}

// walk checks a decoded JSON value against s.
func (p *problems) walk(v any, s *schema, prefix string) {
	switch v := v.(type) {
	case string:
		if s.duration {
			if err := checkDuration(v); err != nil {
				p.bad = append(p.bad, fmt.Sprintf("%s: %v", prefix, err))
			}
		}
	case map[string]any:
		if s.fields == nil {
			return // type errors are reported by the decoder
		}
		for k, sub := range v {
			path := k
			if prefix != "" {
				path = prefix + "." + k
			}
			fs, ok := s.fields[k]
			if !ok {
				p.unknown = append(p.unknown, path)
				continue
			}
			p.walk(sub, fs, path)
		}
	case []any:
		if s.elem == nil {
			return
		}
		if len(v) > s.maxItems {
			p.bad = append(p.bad, fmt.Sprintf("%s: %d entries, more than the %d allowed", prefix, len(v), s.maxItems))
			return // its entries are not worth a report each
		}
		for i, sub := range v {
			p.walk(sub, s.elem, prefix+"["+strconv.Itoa(i)+"]")
		}
	}
}

// maxReported bounds how many problems of one kind a message lists: a
// config full of mistakes gets a readable error, not one as big as itself.
const maxReported = 20

// err describes the problems, nil when there are none.
func (p *problems) err() error {
	sort.Strings(p.unknown)
	sort.Strings(p.bad)
	var parts []string
	if len(p.unknown) > 0 {
		parts = append(parts, "unknown key "+strings.Join(firstOf(p.unknown), ", ")+" (known keys are listed in the README's configuration section)")
	}
	parts = append(parts, firstOf(p.bad)...)
	if len(parts) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrInvalid, strings.Join(parts, "; "))
}

// checkDuration accepts what the decoder can turn into a Duration, and
// refuses a zero written out: that is a mistake, not a request for the
// default (which an absent key gets). Too-short values are Validate's.
func checkDuration(v string) error {
	d, err := time.ParseDuration(v)
	if err != nil {
		return fmt.Errorf("want a duration such as \"30s\", got %q", v)
	}
	if d <= 0 {
		return fmt.Errorf("%s is too short; write at least \"1s\", or leave the key out for the default", d)
	}
	return nil
}

// firstOf keeps the first maxReported entries of a list and says how many
// more there were.
func firstOf(l []string) []string {
	if len(l) <= maxReported {
		return l
	}
	return append(slices.Clone(l[:maxReported]), fmt.Sprintf("and %d more", len(l)-maxReported))
}
