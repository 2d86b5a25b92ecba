package cli

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/gpublocks/gpublocks/daemon"
)

// reloadOnHangup makes SIGHUP rediscover the GPUs (a changed MIG layout)
// and load the config again, from disk and for the node's current label,
// until the returned stop is called.
func reloadOnHangup(ctx context.Context, d *daemon.Daemon) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-hup:
				d.Rescan()
				d.ReloadConfig(ctx, "SIGHUP")
			case <-ctx.Done():
				return
			}
		}
	}()
	return func() {
		signal.Stop(hup)
		cancel()
		<-done
	}
}
