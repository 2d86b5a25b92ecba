package config

import (
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
)

// configSchema is the key tree of Config, derived once from its json tags, so
// unknown keys can be reported with their full path rather than only their
// last element as encoding/json does.
var configSchema = schemaOf(reflect.TypeFor[Config]())

type schema struct {
	fields   map[string]*schema // object keys; nil for scalars
	elem     *schema            // list element
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
			s.fields[name] = schemaOf(f.Type)
		}
		return s
	}
	return &schema{}
}

// problems are what a walk of a document against the schema finds: keys
// the schema does not know and values it can check better than the JSON
// decoder (durations), each with its full path.
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
		for i, sub := range v {
			p.walk(sub, s.elem, prefix+"["+strconv.Itoa(i)+"]")
		}
	}
}

// err describes the problems, nil when there are none.
func (p *problems) err() error {
	sort.Strings(p.unknown)
	sort.Strings(p.bad)
	var parts []string
	if len(p.unknown) > 0 {
		parts = append(parts, "unknown key "+strings.Join(p.unknown, ", ")+" (known keys are listed in the README's configuration section)")
	}
	parts = append(parts, p.bad...)
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
