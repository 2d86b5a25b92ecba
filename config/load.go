package config

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// DefaultName is the config a node uses when its label names none.
const DefaultName = "default"

// NodeLabel is the node label that picks a named config.
const NodeLabel = "gpublocks.io/config"

// Source says where a loaded config came from, for logs and metrics.
type Source struct {
	Path   string // file read; "" for built-in defaults
	Name   string // named config chosen from a directory; "" for a file
	Reason string // why this one was chosen
	// Others are the errors of the directory's other configs, which this
	// node does not use: worth a warning, not a reason to stop.
	Others []error
}

// Set is every named config found in a directory (a mounted ConfigMap holds
// one config per key). A bad key is kept as an error, so that it fails only
// the nodes that choose it.
type Set struct {
	Dir     string
	Configs map[string]*Config
	Files   map[string]string // name → file
	Errors  map[string]error  // name → why that config is invalid
}

// Err joins the errors of every invalid config in the set, nil when all are
// valid (what `gpublocks config validate DIR` reports).
func (s *Set) Err() error {
	var errs []error
	for _, n := range slices.Sorted(maps.Keys(s.Errors)) {
		errs = append(errs, s.Errors[n])
	}
	return errors.Join(errs...)
}

// Load reads path and picks the config for a node whose label value is
// label ("" when the node has none): the labelled config, else "default".
// With path "" the built-in defaults apply.
func Load(path, label string) (*Config, Source, error) {
	if path == "" {
		return Default(), Source{Reason: "no --config given: built-in defaults"}, nil
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, Source{}, fmt.Errorf("%w: reading --config: %w", ErrInvalid, err)
	}
	if !st.IsDir() {
		c, err := LoadFile(path)
		return c, Source{Path: path, Reason: "--config is a single file"}, err
	}
	set, err := LoadDir(path)
	if err != nil {
		return nil, Source{}, err
	}
	return set.Pick(label)
}

// LoadFile parses one config file.
func LoadFile(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// LoadDir parses every config in a directory. Hidden entries (the
// ConfigMap volume's "..data" machinery) are skipped; "name.yaml",
// "name.yml" and "name" all define config "name". A bad config is recorded
// in Errors under its name; only an unreadable directory, or one with no
// config at all, is an error here.
func LoadDir(dir string) (*Set, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	set := &Set{Dir: dir, Configs: map[string]*Config{}, Files: map[string]string{}, Errors: map[string]error{}}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		name := strings.TrimSuffix(strings.TrimSuffix(e.Name(), ".yaml"), ".yml")
		st, err := os.Stat(p) // follow the ConfigMap's symlinks
		if err != nil || st.IsDir() {
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				set.Errors[name] = fmt.Errorf("%w: %s: %w", ErrInvalid, p, err)
			}
			continue
		}
		if prev, dup := set.Files[name]; dup || set.Errors[name] != nil {
			set.Errors[name] = fmt.Errorf("%w: %s and %s both define config %q", ErrInvalid, prev, p, name)
			delete(set.Configs, name)
			continue
		}
		set.Files[name] = p
		c, err := LoadFile(p)
		if err != nil {
			set.Errors[name] = err
			continue
		}
		set.Configs[name] = c
	}
	if len(set.Files) == 0 {
		return nil, fmt.Errorf("%w: %s holds no config files", ErrInvalid, dir)
	}
	return set, nil
}

// Names returns the names of every config file in the set, valid or not,
// sorted.
func (s *Set) Names() []string { return slices.Sorted(maps.Keys(s.Files)) }

// Pick chooses the config for a node label value. Only the chosen config
// must be valid: the others' errors come back in Source.Others.
func (s *Set) Pick(label string) (*Config, Source, error) {
	name, reason := label, fmt.Sprintf("node label %s=%s", NodeLabel, label)
	if label == "" {
		name, reason = DefaultName, fmt.Sprintf("node has no %s label", NodeLabel)
	}
	if err := s.Errors[name]; err != nil {
		return nil, Source{}, fmt.Errorf("config %q, chosen by %s: %w", name, reason, err)
	}
	c, ok := s.Configs[name]
	if !ok {
		if label != "" {
			return nil, Source{}, fmt.Errorf("%w: node label %s=%s names no config in %s (have: %s); fix the label or add the key to the ConfigMap",
				ErrInvalid, NodeLabel, label, s.Dir, strings.Join(s.Names(), ", "))
		}
		return nil, Source{}, fmt.Errorf("%w: %s has no %q config and the node has no %s label (have: %s)",
			ErrInvalid, s.Dir, DefaultName, NodeLabel, strings.Join(s.Names(), ", "))
	}
	src := Source{Path: s.Files[name], Name: name, Reason: reason}
	for _, n := range slices.Sorted(maps.Keys(s.Errors)) {
		src.Others = append(src.Others, s.Errors[n])
	}
	return c, src, nil
}
