package config

import (
	"reflect"
	"sort"
	"strconv"
	"strings"
)

// configSchema is the key tree of Config, derived once from its json tags, so
// unknown keys can be reported with their full path rather than only their
// last element as encoding/json does.
var configSchema = schemaOf(reflect.TypeFor[Config]())

type schema struct {
	fields map[string]*schema // object keys; nil for scalars
	elem   *schema            // list element
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
			return &schema{}
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

// unknownKeys walks a decoded JSON value against s and returns the paths of
// keys s does not know, sorted.
func unknownKeys(v any, s *schema, prefix string) []string {
	var out []string
	switch v := v.(type) {
	case map[string]any:
		if s.fields == nil {
			return nil // type errors are reported by the decoder
		}
		for k, sub := range v {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			fs, ok := s.fields[k]
			if !ok {
				out = append(out, p)
				continue
			}
			out = append(out, unknownKeys(sub, fs, p)...)
		}
	case []any:
		if s.elem == nil {
			return nil
		}
		for i, sub := range v {
			out = append(out, unknownKeys(sub, s.elem, prefix+"["+strconv.Itoa(i)+"]")...)
		}
	}
	sort.Strings(out)
	return out
}
