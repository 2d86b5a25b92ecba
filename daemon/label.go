package daemon

import (
	"context"
	"fmt"

	"github.com/gpublocks/gpublocks/config"
)

// ReadNodeLabel returns the node's gpublocks.io/config label once ("" when
// the node has none), for commands that plan once, such as inspect.
func ReadNodeLabel(ctx context.Context, api *NodeAPI, node string) (string, error) {
	m, err := api.node(ctx, node)
	if err != nil {
		return "", fmt.Errorf("reading node %s for its %s label: %w", node, config.NodeLabel, err)
	}
	return m.Labels[config.NodeLabel], nil
}
