package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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

// configDebounce is how long the config watcher waits after a relevant
// event for more: one update arrives as a burst of events (a ConfigMap
// swap is several), applied once.
const configDebounce = 100 * time.Millisecond

// configWatch is what the config watcher shares with the rest of the
// daemon: counts, and a probe that tests wait on instead of sleeping.
type configWatch struct {
	loads  atomic.Int64 // config loads, whatever triggered them
	events atomic.Int64 // file events received, relevant or not

	idleOnce sync.Once
	idle     chan chan struct{} // see configIdle
}

func (cw *configWatch) idleCh() chan chan struct{} {
	cw.idleOnce.Do(func() { cw.idle = make(chan chan struct{}) })
	return cw.idle
}

// configIdle waits until the config watcher has dealt with every event it
// has received: none is waiting out the debounce, and the reload that the
// last relevant one asked for is done.
func (d *Daemon) configIdle(ctx context.Context) error {
	return roundTrip(ctx, d.cw.idleCh())
}

// ReloadConfig loads the config again, from disk and for the node's
// current label, as a file change does (SIGHUP: the operator's way to
// reload without relying on the watch). A bad config is rejected, logged
// and counted; the last good one keeps serving.
func (d *Daemon) ReloadConfig(ctx context.Context, trigger string) {
	d.reloadConfig(ctx, trigger)
}

// watchConfig watches the config's files. A mounted ConfigMap changes by
// swapping its ..data symlink and editors replace files by rename, so
// directories are watched, not files; and since a watch follows the
// directory it was put on, not its path, the directory's parent is watched
// too, so that a replaced directory is watched again (configTargets.sync).
// Only events on the config's own paths count: a single-file config does
// not reload when its neighbours change.
func (d *Daemon) watchConfig(ctx context.Context, wg *sync.WaitGroup) error {
	logger := klog.FromContext(ctx)
	path, err := filepath.Abs(d.opts.ConfigPath)
	if err != nil {
		return fmt.Errorf("watching config %s: %w", d.opts.ConfigPath, err)
	}
	st, err := os.Stat(path)
	t := &configTargets{path: path, isDir: err == nil && st.IsDir(), watched: map[string]os.FileInfo{}}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching config %s: %w", path, err)
	}
	if err := t.sync(w); err != nil {
		_ = w.Close()
		return fmt.Errorf("watching config %s: %w", path, err)
	}
	wg.Go(func() {
		defer func() { _ = w.Close() }()
		var debounce <-chan time.Time
		for {
			idle := d.cw.idleCh()
			if debounce != nil {
				idle = nil // not idle: a reload is pending
			}
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-w.Events:
				if !ok {
					logger.Error(nil, "Config watch closed; config changes need a SIGHUP or a restart", "path", path)
					return
				}
				if t.relevant(ev.Name) {
					debounce = time.After(configDebounce)
				}
				d.cw.events.Add(1)
			case err, ok := <-w.Errors:
				if !ok {
					logger.Error(nil, "Config watch closed; config changes need a SIGHUP or a restart", "path", path)
					return
				}
				logger.Error(err, "Config watch error", "path", path)
				if errors.Is(err, fsnotify.ErrEventOverflow) {
					debounce = time.After(configDebounce) // events were lost: look again
				}
			case <-debounce:
				debounce = nil
				// Watch where the config is now before reading it, so
				// that no change after the read goes unseen.
				if err := t.sync(w); err != nil {
					logger.Error(err, "Config watch incomplete: a change there is missed until another change of the config (which tries again), a SIGHUP (reloads once) or a restart", "path", path)
				}
				d.reloadConfig(ctx, "config files changed")
			case ch := <-idle:
				close(ch)
			}
		}
	})
	return nil
}

// configTargets are the paths a config's changes show up on, and the
// directories watched for them.
type configTargets struct {
	path  string // the config, absolute
	isDir bool   // a directory of named configs, else one file
	// names are the paths whose events count: the config path, each
	// symlink followed from it (a ConfigMap key, its ..data), where it
	// ends, and the directory it lives in (replaced whole).
	names map[string]bool
	// contents is a directory config, resolved: its visible entries (the
	// configs) and its ..data symlink count too.
	contents string
	// watched are the directories watched, as they were when the watch was
	// put on them.
	watched map[string]os.FileInfo
}

// relevant reports whether an event on name may change the config.
func (t *configTargets) relevant(name string) bool {
	if t.names[name] {
		return true
	}
	if _, ok := t.watched[name]; ok {
		return true // a watched directory itself was moved or removed
	}
	if t.contents != "" && filepath.Dir(name) == t.contents {
		base := filepath.Base(name)
		return !strings.HasPrefix(base, ".") || base == "..data"
	}
	return false
}

// plan recomputes names and contents, and returns the directories to
// watch for them.
func (t *configTargets) plan() []string {
	links, final := resolveLinks(t.path)
	t.names = map[string]bool{t.path: true, final: true}
	for _, l := range links {
		t.names[l] = true
	}
	t.contents = ""
	if t.isDir {
		t.contents = final
	} else {
		t.names[filepath.Dir(t.path)] = true
	}
	dirs := map[string]bool{}
	for n := range t.names {
		dirs[filepath.Dir(n)] = true
	}
	if t.contents != "" {
		dirs[t.contents] = true
	}
	return slices.Sorted(maps.Keys(dirs))
}

// sync watches the directories the config's paths are in now and stops
// watching those they left. A directory replaced since it was watched is
// watched again: the old watch follows the old directory. One that does
// not exist is skipped; its parent's watch tells when it is back.
func (t *configTargets) sync(w *fsnotify.Watcher) error {
	dirs := t.plan()
	live := map[string]bool{}
	for _, p := range w.WatchList() {
		live[p] = true
	}
	var errs []error
	watched := map[string]os.FileInfo{}
	for _, dir := range dirs {
		// Stat before Add: if the directory is replaced in between, the
		// next sync sees a different directory and watches it again.
		st, err := os.Stat(dir)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		if old, ok := t.watched[dir]; ok && live[dir] && os.SameFile(old, st) {
			watched[dir] = old
			continue
		}
		if live[dir] {
			_ = w.Remove(dir) // a watch on the directory this path used to name
		}
		if err := w.Add(dir); err != nil {
			errs = append(errs, fmt.Errorf("watching %s: %w", dir, err))
			continue
		}
		watched[dir] = st
	}
	for dir := range t.watched {
		if _, ok := watched[dir]; !ok && live[dir] && !slices.Contains(dirs, dir) {
			_ = w.Remove(dir)
		}
	}
	t.watched = watched
	return errors.Join(errs...)
}

// maxLinks is how many symlinks resolveLinks follows, as Linux does.
const maxLinks = 40

// resolveLinks follows the symlinks on an absolute path as the kernel
// does, one component at a time, and returns each symlink it went through
// and the path it ends at. A component that is missing or not a symlink is
// taken as it is: what was found so far is still worth watching.
func resolveLinks(path string) (links []string, final string) {
	done := "/"
	rest := strings.Split(path, "/")
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			done = filepath.Dir(done)
			continue
		}
		next := filepath.Join(done, c)
		target, err := os.Readlink(next)
		if err != nil || len(links) == maxLinks {
			done = next
			continue
		}
		links = append(links, next)
		if filepath.IsAbs(target) {
			done = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return links, done
}

// reloadConfig loads the config for the node's current label. A config
// that does not load is rejected, counted and logged here; one that loads
// becomes the candidate, which reconcile applies only once a plan made
// from it can be served. Either way the last good config keeps serving
// until then.
func (d *Daemon) reloadConfig(ctx context.Context, why string) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	d.cw.loads.Add(1)
	logger := klog.FromContext(ctx)
	d.mu.Lock()
	label := d.label
	d.mu.Unlock()
	cfg, src, err := config.Load(d.opts.ConfigPath, label)
	if err == nil && d.opts.ConfigPath == "" && label != "" {
		err = errors.New("the node has a " + config.NodeLabel + " label but no --config was given")
	}
	if err == nil {
		// A `mig:` rule this node cannot honour rejects the config whole.
		if merr := d.checkMigLayouts(ctx, cfg); merr != nil {
			err = fmt.Errorf("config %q: %w", configName(src), merr)
		}
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
