package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"time"

	"github.com/fsnotify/fsnotify"
	"k8s.io/klog/v2"

	"github.com/gpublocks/gpublocks/config"
)

// labelWait bounds how long the first plan waits for the node's label, so
// a node never serves the default config for a moment before its own
// (NVIDIA's plugin races its config sidecar at start-up; we wait instead).
const labelWait = 10 * time.Second

// startWatchers follows the node's label and the config directory; both
// re-plan live.
func (d *Daemon) startWatchers(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	if d.opts.NodeName != "" {
		client := d.opts.NodeClient
		if client == nil {
			var err error
			if client, err = NodeClient(); err != nil {
				logger.Info("Warning: cannot read the node's config label; using the config's default entry", "node", d.opts.NodeName, "err", err)
			}
		}
		if client != nil {
			first := make(chan struct{})
			var once bool
			go watchNodeLabel(ctx, client, d.opts.NodeName, func(label string) {
				d.mu.Lock()
				d.label = label
				d.mu.Unlock()
				d.reloadConfig(ctx, "node label changed")
				if !once {
					once = true
					close(first)
				}
			})
			select {
			case <-first:
			case <-time.After(labelWait):
				logger.Info("Warning: node label not read yet; starting with the default config", "node", d.opts.NodeName, "waited", labelWait)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	if d.opts.ConfigPath != "" {
		if err := d.watchConfig(ctx); err != nil {
			return err
		}
	}
	return nil
}

// watchConfig watches the directory holding the config: a mounted
// ConfigMap changes by swapping its ..data symlink, and editors replace
// files by rename, so the directory, not the file, is what to watch.
func (d *Daemon) watchConfig(ctx context.Context) error {
	dir := d.opts.ConfigPath
	if st, err := os.Stat(dir); err == nil && !st.IsDir() {
		dir = filepath.Dir(dir)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	if err := w.Add(dir); err != nil {
		_ = w.Close()
		return err
	}
	go func() {
		defer func() { _ = w.Close() }()
		// One update arrives as a burst of events; apply it once.
		var debounce <-chan time.Time
		for {
			select {
			case <-ctx.Done():
				return
			case _, ok := <-w.Events:
				if !ok {
					return
				}
				debounce = time.After(100 * time.Millisecond)
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				klog.FromContext(ctx).Error(err, "Config watch error", "dir", dir)
			case <-debounce:
				debounce = nil
				d.reloadConfig(ctx, "config files changed")
			}
		}
	}()
	return nil
}

// reloadConfig loads the config for the node's current label. A bad config
// is rejected, counted and logged, and the last good one keeps serving.
func (d *Daemon) reloadConfig(ctx context.Context, why string) {
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
		status := d.status
		d.mu.Unlock()
		logger.Error(err, "Config rejected; still serving the last good config", "trigger", why, "generation", status.Generation)
		d.notifyConfig(status)
		return
	}
	changed := !reflect.DeepEqual(cfg, d.cfg) || src.Name != d.source.Name
	hadError := d.status.LastError != nil
	d.status.LastError = nil
	if changed {
		d.cfg, d.source = cfg, src
		d.status.Generation++
		d.status.Name = src.Name
	}
	status := d.status
	d.mu.Unlock()
	if changed {
		logger.Info("Config applied", "trigger", why, "path", src.Path, "name", src.Name, "reason", src.Reason, "generation", status.Generation)
		d.Replan()
	}
	if changed || hadError {
		d.notifyConfig(status)
	}
}

func (d *Daemon) notifyConfig(s ConfigStatus) {
	if d.opts.OnConfig != nil {
		d.opts.OnConfig(s)
	}
}
