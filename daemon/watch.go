package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"k8s.io/klog/v2"

	"github.com/gpublocks/gpublocks/config"
)

// labelWait bounds how long the first plan waits for the node's label, so
// a node never serves the default config for a moment before its own
// (NVIDIA's plugin races its config sidecar at start-up; we wait instead).
// A variable for tests.
var labelWait = 10 * time.Second

// startWatchers follows the config directory and the node's label; both
// re-plan live. The directory is watched first, and read again once
// watched, so that no edit made since New loaded the config is missed
// (not even during the wait for the label). The watchers stop with ctx and
// are waited for through wg.
func (d *Daemon) startWatchers(ctx context.Context, wg *sync.WaitGroup) error {
	logger := klog.FromContext(ctx)
	if d.opts.ConfigPath != "" {
		if err := d.watchConfig(ctx, wg); err != nil {
			return err
		}
		d.reloadConfig(ctx, "config watch started")
	}
	if d.opts.NodeName == "" {
		return nil
	}
	client := d.opts.NodeClient
	if client == nil {
		var err error
		if client, err = NodeClient(); err != nil {
			logger.Info("Cannot read the node's config label; using the config's default entry", "node", d.opts.NodeName, "err", err)
			return nil
		}
	}
	first := make(chan struct{})
	var once bool // only the informer's handler goroutine touches it
	wg.Go(func() {
		watchNodeLabel(ctx, client, d.opts.NodeName, func(label string) {
			d.mu.Lock()
			d.label = label
			d.mu.Unlock()
			d.reloadConfig(ctx, "node label changed")
			if !once {
				once = true
				close(first)
			}
		})
	})
	select {
	case <-first:
	case <-time.After(labelWait):
		logger.Info("Node label not read yet; starting with the default config", "node", d.opts.NodeName, "waited", labelWait)
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// watchConfig watches the directory holding the config: a mounted
// ConfigMap changes by swapping its ..data symlink, and editors replace
// files by rename, so the directory, not the file, is what to watch.
func (d *Daemon) watchConfig(ctx context.Context, wg *sync.WaitGroup) error {
	dir := d.opts.ConfigPath
	if st, err := os.Stat(dir); err == nil && !st.IsDir() {
		dir = filepath.Dir(dir)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching config directory %s: %w", dir, err)
	}
	if err := w.Add(dir); err != nil {
		_ = w.Close()
		return fmt.Errorf("watching config directory %s: %w", dir, err)
	}
	wg.Go(func() {
		defer func() { _ = w.Close() }()
		// One update arrives as a burst of events; apply it once.
		var debounce <-chan time.Time
		for {
			select {
			case <-ctx.Done():
				return
			case _, ok := <-w.Events:
				if !ok {
					klog.FromContext(ctx).Error(nil, "Config watch closed; config changes need a restart", "dir", dir)
					return
				}
				debounce = time.After(100 * time.Millisecond)
			case err, ok := <-w.Errors:
				if !ok {
					klog.FromContext(ctx).Error(nil, "Config watch closed; config changes need a restart", "dir", dir)
					return
				}
				klog.FromContext(ctx).Error(err, "Config watch error", "dir", dir)
			case <-debounce:
				debounce = nil
				d.reloadConfig(ctx, "config files changed")
			}
		}
	})
	return nil
}

// reloadConfig loads the config for the node's current label. A config
// that does not load is rejected, counted and logged here; one that loads
// becomes the candidate, which reconcile applies only once a plan made
// from it can be served. Either way the last good config keeps serving
// until then.
func (d *Daemon) reloadConfig(ctx context.Context, why string) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	logger := klog.FromContext(ctx)
	d.mu.Lock()
	label := d.label
	d.mu.Unlock()
	cfg, src, err := config.Load(d.opts.ConfigPath, label)
	if err == nil && d.opts.ConfigPath == "" && label != "" {
		err = errors.New("the node has a " + config.NodeLabel + " label but no --config was given")
	}
	d.mu.Lock()
	if err != nil {
		d.status.Errors++
		d.status.LastError = err
		generation := d.status.Generation
		d.mu.Unlock()
		logger.Error(err, "Config rejected; still serving the last good config", "trigger", why, "generation", generation)
		return
	}
	if reflect.DeepEqual(cfg, d.cfg) && src.Name == d.source.Name {
		// What serves already: nothing to apply, and a change still
		// pending has been undone.
		dropped := d.candidate != nil
		d.candidate, d.heldLogged = nil, false
		d.status.LastError = nil
		d.mu.Unlock()
		if dropped {
			logger.Info("Pending config change withdrawn; the config in force is asked again", "trigger", why, "name", src.Name)
		}
		return
	}
	if d.candidate != nil && reflect.DeepEqual(cfg, d.candidate) && src.Name == d.candidateSource.Name {
		d.mu.Unlock()
		return // pending already
	}
	d.candidate, d.candidateSource, d.heldLogged = cfg, src, false
	d.mu.Unlock()
	logger.Info("Config loaded", "trigger", why, "path", src.Path, "name", src.Name, "reason", src.Reason)
	signal(d.reconfig)
}
