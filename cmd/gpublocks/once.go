package main

import (
	"context"

	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/daemon"
)

// computeOnce discovers and plans once, as serve's first pass would, for
// inspect and cdi generate. It returns the backend's name for the report.
func computeOnce(ctx context.Context, o daemon.Options) (*daemon.State, string, error) {
	cfg, src, err := config.Load(o.ConfigPath, "")
	if err != nil {
		return nil, "", err
	}
	backend, err := daemon.OpenBackend(ctx, o)
	if err != nil {
		return nil, "", err
	}
	defer func() { _ = backend.Close() }()
	driver, err := daemon.FindDriverFiles(ctx, o)
	if err != nil {
		return nil, "", err
	}
	st, err := daemon.Compute(ctx, backend, o, cfg, driver, nil)
	if err != nil {
		return nil, "", err
	}
	st.Source = src
	return st, backend.Name(), nil
}
