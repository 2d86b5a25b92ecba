package cli

import (
	"context"
	"fmt"

	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/daemon"
)

// computeOnce discovers and plans once, as serve's first pass would, for
// inspect and cdi generate. It returns the backend's name for the report.
func computeOnce(ctx context.Context, o daemon.Options) (*daemon.State, string, error) {
	label := ""
	if o.NodeName != "" {
		client := o.NodeClient
		var err error
		if client == nil {
			client, err = daemon.NodeClient()
		}
		if err == nil {
			label, err = daemon.ReadNodeLabel(ctx, client, o.NodeName)
		}
		if err != nil {
			return nil, "", fmt.Errorf("--node-name %s: %w (drop --node-name to use the config's default entry)", o.NodeName, err)
		}
	}
	cfg, src, err := config.Load(o.ConfigPath, label)
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
