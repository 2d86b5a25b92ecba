package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
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

// MaxFileSize is the most a config file may hold: what one ConfigMap can
// hold in all. Anything bigger is a mistake, and reading it whole (a
// symlink to /dev/zero never ends) would cost the node its memory.
const MaxFileSize = 1 << 20

// LoadFile parses one config file: a regular file (or a symlink to one) of
// at most MaxFileSize bytes.
func LoadFile(path string) (*Config, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// readFile reads a config file without ever blocking or reading without
// end: only a regular file is opened (a named pipe would block the open
// until some writer comes, a device may never end), non-blocking so that
// one swapped in after the check cannot block either, and checked again
// once open.
func readFile(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err // names the path: "stat …: too many levels of symbolic links"
	}
	if err := checkRegular(path, st); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	if st, err = f.Stat(); err != nil {
		return nil, err
	}
	if err := checkRegular(path, st); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("%s holds more than %d bytes (1 MiB, the most a ConfigMap can hold); shorten it or split it into several named configs", path, MaxFileSize)
	}
	return data, nil
}

// checkRegular refuses anything but a regular file, naming what it is.
func checkRegular(path string, st fs.FileInfo) error {
	m := st.Mode()
	if m.IsRegular() {
		return nil
	}
	what := "not a regular file"
	switch {
	case m&fs.ModeNamedPipe != 0:
		what = "a named pipe (FIFO)"
	case m&fs.ModeCharDevice != 0:
		what = "a character device"
	case m&fs.ModeDevice != 0:
		what = "a block device"
	case m&fs.ModeSocket != 0:
		what = "a socket"
	case m.IsDir():
		what = "a directory"
	}
	return fmt.Errorf("%s is %s; a config must be a regular file (or a symlink to one) of at most 1 MiB", path, what)
}

// LoadDir parses every config in a directory. Hidden entries (the
// ConfigMap volume's "..data" machinery) are skipped; "name.yaml",
// "name.yml" and "name" all define config "name". A bad config is recorded
// in Errors under its name; only an unreadable directory, or one with no
// config at all, is an error here. A key that cannot be read (a broken
// symlink, a symlink loop, a named pipe) is a bad config with its own error.
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
		if err == nil && st.IsDir() {
			continue // a subdirectory holds no config of this set
		}
		if errors.Is(err, fs.ErrNotExist) {
			if _, lerr := os.Lstat(p); errors.Is(lerr, fs.ErrNotExist) {
				continue // removed since the listing
			}
			// else a symlink to nothing: a key whose file is missing
		}
		if prev, dup := set.Files[name]; dup {
			set.Errors[name] = fmt.Errorf("%w: %s and %s both define config %q", ErrInvalid, prev, p, name)
			delete(set.Configs, name)
			continue
		}
		set.Files[name] = p
		if err != nil {
			set.Errors[name] = fmt.Errorf("%w: %w", ErrInvalid, err)
			continue
		}
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
