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
	"time"

	"github.com/fsnotify/fsnotify"
	"go.yaml.in/yaml/v3"
	"k8s.io/klog/v2"
	specs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpublocks/gpublocks/internal/atomicfile"
)

// SpecFileMode is the mode of a written spec: runtimes and tools that are
// not root (podman rootless, nvidia-ctk cdi list) must be able to read it.
// The CDI library's own writer leaves 0600, so specs are written with
// atomicfile instead, 0644 from the first byte.
const SpecFileMode fs.FileMode = 0o644

// Healing retries, when the directory cannot be watched or a rewrite
// fails (a full filesystem), back off between these bounds.
const (
	healRetryMin = 250 * time.Millisecond
	healRetryMax = 10 * time.Second
)

// A Writer keeps one spec file, <dir>/<vendor>-<class>.yaml, up to date. It
// is safe for concurrent use; writes are serialised.
type Writer struct {
	mu   sync.Mutex
	dir  string
	kind Kind
	// want is the content of the last spec written, which Heal restores;
	// nil when there is none (nothing written yet, or removed).
	want []byte
	// swept is set once stray temporary files of ours have been removed.
	swept bool
}

// NewWriter returns a Writer for the spec of kind in dir (the --cdi-dir).
// The directory need not exist yet; the first write creates it.
func NewWriter(dir string, kind Kind) (*Writer, error) {
	if err := kind.Validate(); err != nil {
		return nil, err
	}
	return &Writer{dir: filepath.Clean(dir), kind: kind}, nil
}

// Path is the spec file's path.
func (w *Writer) Path() string { return filepath.Join(w.dir, w.kind.SpecFileName()) }

// Write validates spec and writes it atomically (a reader sees the old or
// the new file, never a partial one, even if this process is killed), mode
// 0644. When the file already holds exactly this content with that mode it
// is left alone, so its mtime only moves when devices change. A spec
// without devices is not a valid CDI spec: the file is removed instead.
// changed reports whether the file was written or removed. The first call
// also removes temporary files that an earlier run of ours left behind
// when it died mid-write.
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
	data, err := Marshal(spec)
	if err != nil {
		return false, err
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.swept {
		removed, err := atomicfile.RemoveTemps(w.dir, w.kind.SpecFileName())
		for _, p := range removed {
			logger.Info("Removed a temporary file left by an interrupted write", "file", p)
		}
		if err != nil {
			logger.Error(err, "Cannot remove temporary files left by an interrupted write")
		}
		w.swept = true
	}
	// Set before writing: should the write fail, Heal retries it too.
	w.want = data
	if same, err := w.holds(data); err != nil {
		return false, err
	} else if same {
		logger.V(4).Info("CDI spec unchanged")
		return false, nil
	}
	if err := w.store(data); err != nil {
		return false, err
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
	w.want = nil
	err := os.Remove(w.Path())
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("%w: %w", ErrWriteSpec, err)
}

// store writes data to the spec file, creating the directory if needed.
// The caller holds mu.
func (w *Writer) store(data []byte) error {
	if err := os.MkdirAll(w.dir, 0o755); err != nil {
		return fmt.Errorf("%w: %w", ErrWriteSpec, err)
	}
	if err := atomicfile.Write(w.Path(), data, SpecFileMode); err != nil {
		return fmt.Errorf("%w: %w", ErrWriteSpec, err)
	}
	return nil
}

// holds reports whether the spec file holds data byte for byte as a
// regular file with the right mode. The caller holds mu.
func (w *Writer) holds(data []byte) (bool, error) {
	fi, err := os.Lstat(w.Path())
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrWriteSpec, err)
	}
	if fi.Mode().Perm() != SpecFileMode || !fi.Mode().IsRegular() || fi.Size() != int64(len(data)) {
		return false, nil
	}
	old, err := os.ReadFile(w.Path())
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrWriteSpec, err)
	}
	return bytes.Equal(old, data), nil
}

// Heal keeps the last spec written on disk until ctx is cancelled: when
// the file is deleted, replaced, edited or made unreadable (chmod), or its
// whole directory is deleted or moved away, it recreates the directory and
// rewrites the file at once. Without it a runtime asked for a device that
// Allocate still names fails every new container. It watches the directory
// with fsnotify; while the directory cannot be watched, or a rewrite fails
// (a full filesystem), it retries with backoff. After Remove, or before the
// first Write, there is nothing to restore.
func (w *Writer) Heal(ctx context.Context) {
	logger := klog.FromContext(ctx).WithValues("path", w.Path())
	watcher, err := fsnotify.NewWatcher()
	if err != nil {
		logger.Error(err, "Cannot watch the CDI directory: a deleted spec is only restored by polling")
	}
	var events <-chan fsnotify.Event
	var errs <-chan error
	if watcher != nil {
		defer func() { _ = watcher.Close() }()
		events, errs = watcher.Events, watcher.Errors
	}
	watching := false
	delay := healRetryMin
	retry := time.NewTimer(0) // check once at start
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-events:
			if filepath.Clean(ev.Name) == w.dir {
				if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
					// fsnotify has dropped the watch with the directory.
					watching = false
				} else {
					continue
				}
			} else if filepath.Base(ev.Name) != w.kind.SpecFileName() {
				continue // our own temporary files, other vendors' specs
			}
		case err := <-errs:
			// A lost event (queue overflow) may have been ours: check.
			logger.V(2).Info("CDI directory watch error", "err", err)
		case <-retry.C:
		}
		if !watching && watcher != nil {
			err := w.watch(watcher)
			if err != nil {
				logger.V(2).Info("Cannot watch the CDI directory yet; polling", "err", err)
			}
			watching = err == nil
		}
		switch err := w.repair(ctx); {
		case err != nil:
			logger.Error(err, "Cannot restore the CDI spec; retrying", "retryIn", delay)
			retry.Reset(delay)
			delay = min(2*delay, healRetryMax)
		case !watching:
			// Poll until the directory can be watched again.
			delay = healRetryMin
			retry.Reset(healRetryMin)
		default:
			delay = healRetryMin
		}
	}
}

// watch (re)creates the directory and watches it.
func (w *Writer) watch(watcher *fsnotify.Watcher) error {
	if err := os.MkdirAll(w.dir, 0o755); err != nil {
		return err
	}
	return watcher.Add(w.dir)
}

// repair rewrites the spec file when it no longer holds the last spec
// written.
func (w *Writer) repair(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.want == nil {
		return nil
	}
	if same, err := w.holds(w.want); err == nil && same {
		return nil
	}
	if err := w.store(w.want); err != nil {
		return err
	}
	klog.FromContext(ctx).Info("Restored the CDI spec, which was removed or changed by someone else", "path", w.Path())
	return nil
}

// Marshal returns the spec as Write stores it, for `gpublocks cdi
// generate`: the encoding the CDI library uses for a .yaml spec (a "---"
// line, then go.yaml.in/yaml/v3), so a file is the same whichever of the two
// wrote it.
func Marshal(spec *specs.Spec) ([]byte, error) {
	data, err := yaml.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidSpec, err)
	}
	return append([]byte("---\n"), data...), nil
}
