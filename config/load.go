package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
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
}

// Set is every named config found at a path: one file is one config named
// after the file, a directory (a mounted ConfigMap) holds one config per key.
type Set struct {
	Dir     string
	Configs map[string]*Config
	Files   map[string]string // name → file
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
// "name.yml" and "name" all define config "name". Every bad file is
// reported, not only the first.
func LoadDir(dir string) (*Set, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	set := &Set{Dir: dir, Configs: map[string]*Config{}, Files: map[string]string{}}
	var errs []error
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		st, err := os.Stat(p) // follow the ConfigMap's symlinks
		if err != nil || st.IsDir() {
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("%s: %w", p, err))
			}
			continue
		}
		name := strings.TrimSuffix(strings.TrimSuffix(e.Name(), ".yaml"), ".yml")
		if prev, dup := set.Files[name]; dup {
			errs = append(errs, fmt.Errorf("%w: %s and %s both define config %q", ErrInvalid, prev, p, name))
			continue
		}
		c, err := LoadFile(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		set.Configs[name] = c
		set.Files[name] = p
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if len(set.Configs) == 0 {
		return nil, fmt.Errorf("%w: %s holds no config files", ErrInvalid, dir)
	}
	return set, nil
}

// Names returns the config names, sorted.
func (s *Set) Names() []string {
	names := make([]string, 0, len(s.Configs))
	for n := range s.Configs {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Pick chooses the config for a node label value.
func (s *Set) Pick(label string) (*Config, Source, error) {
	if label != "" {
		if c, ok := s.Configs[label]; ok {
			return c, Source{Path: s.Files[label], Name: label, Reason: fmt.Sprintf("node label %s=%s", NodeLabel, label)}, nil
		}
		return nil, Source{}, fmt.Errorf("%w: node label %s=%s names no config in %s (have: %s); fix the label or add the key to the ConfigMap",
			ErrInvalid, NodeLabel, label, s.Dir, strings.Join(s.Names(), ", "))
	}
	if c, ok := s.Configs[DefaultName]; ok {
		return c, Source{Path: s.Files[DefaultName], Name: DefaultName, Reason: fmt.Sprintf("node has no %s label", NodeLabel)}, nil
	}
	return nil, Source{}, fmt.Errorf("%w: %s has no %q config and the node has no %s label (have: %s)",
		ErrInvalid, s.Dir, DefaultName, NodeLabel, strings.Join(s.Names(), ", "))
}
