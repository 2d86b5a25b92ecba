package cdi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"go.yaml.in/yaml/v3"
	"k8s.io/klog/v2"
	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"
	specs "tags.cncf.io/container-device-interface/specs-go"
)

// SpecFileMode is the mode of a written spec: runtimes and tools that are
// not root (podman rootless, nvidia-ctk cdi list) must be able to read it.
// The CDI library's atomic write leaves 0600.
const SpecFileMode fs.FileMode = 0o644

// A Writer keeps one spec file, <dir>/<vendor>-<class>.yaml, up to date. It
// is safe for concurrent use; writes are serialised.
type Writer struct {
	mu    sync.Mutex
	dir   string
	kind  Kind
	cache *cdiapi.Cache
}

// NewWriter returns a Writer for the spec of kind in dir (the --cdi-dir).
// The directory need not exist yet; the first write creates it.
func NewWriter(dir string, kind Kind) (*Writer, error) {
	if err := kind.Validate(); err != nil {
		return nil, err
	}
	// Auto-refresh would start an fsnotify watcher on the directory; the
	// cache is only used to write, so it needs none.
	cache, err := cdiapi.NewCache(cdiapi.WithSpecDirs(dir), cdiapi.WithAutoRefresh(false))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrWriteSpec, err)
	}
	return &Writer{dir: dir, kind: kind, cache: cache}, nil
}

// Path is the spec file's path.
func (w *Writer) Path() string { return filepath.Join(w.dir, w.kind.SpecFileName()) }

// Write validates spec and writes it atomically (a reader sees the old or
// the new file, never a partial one), mode 0644. When the file already holds
// exactly this content with that mode it is left alone, so its mtime only
// moves when devices change. A spec without devices is not a valid CDI spec:
// the file is removed instead. changed reports whether the file was written
// or removed.
func (w *Writer) Write(ctx context.Context, spec *specs.Spec) (changed bool, err error) {
	logger := klog.FromContext(ctx).WithValues("path", w.Path())
	if spec != nil && len(spec.Devices) == 0 {
		logger.Info("No devices to publish: removing the CDI spec")
		return w.remove()
	}
	if err := ValidateSpec(spec); err != nil {
		return false, err
	}
	if spec.Kind != w.kind.String() {
		return false, fmt.Errorf("%w: kind %q, writer is for %q", ErrInvalidSpec, spec.Kind, w.kind)
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	if same, err := w.unchanged(spec); err != nil {
		return false, err
	} else if same {
		logger.V(4).Info("CDI spec unchanged")
		return false, nil
	}
	if err := w.cache.WriteSpec(spec, w.kind.SpecFileName()); err != nil {
		return false, fmt.Errorf("%w: %s: %w", ErrWriteSpec, w.Path(), err)
	}
	if err := os.Chmod(w.Path(), SpecFileMode); err != nil {
		return true, fmt.Errorf("%w: %w", ErrWriteSpec, err)
	}
	logger.Info("Wrote CDI spec", "devices", len(spec.Devices), "cdiVersion", spec.Version)
	return true, nil
}

// Remove deletes the spec file; a file that does not exist is no error.
func (w *Writer) Remove(ctx context.Context) error {
	changed, err := w.remove()
	if changed {
		klog.FromContext(ctx).Info("Removed CDI spec", "path", w.Path())
	}
	return err
}

func (w *Writer) remove() (bool, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	err := os.Remove(w.Path())
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("%w: %w", ErrWriteSpec, err)
}

// unchanged reports whether the file holds spec byte for byte with the
// right mode. It encodes the spec as the CDI library does for a .yaml file
// (a "---" line, then go.yaml.in/yaml/v3); should the library change its
// encoding, the only cost is one needless rewrite.
func (w *Writer) unchanged(spec *specs.Spec) (bool, error) {
	fi, err := os.Stat(w.Path())
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrWriteSpec, err)
	}
	if fi.Mode().Perm() != SpecFileMode || !fi.Mode().IsRegular() {
		return false, nil
	}
	old, err := os.ReadFile(w.Path())
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrWriteSpec, err)
	}
	data, err := Marshal(spec)
	if err != nil {
		return false, err
	}
	return bytes.Equal(old, data), nil
}

// Marshal returns the spec as Write would store it, for
// `gpublocks cdi generate`.
func Marshal(spec *specs.Spec) ([]byte, error) {
	data, err := yaml.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidSpec, err)
	}
	return append([]byte("---\n"), data...), nil
}
