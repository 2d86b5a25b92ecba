package daemon

import (
	"context"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/metadata"

	"github.com/gpublocks/gpublocks/config"
)

// ReadNodeLabel returns the node's gpublocks.io/config label once ("" when
// the node has none), for commands that plan once, such as inspect.
func ReadNodeLabel(ctx context.Context, client metadata.Interface, node string) (string, error) {
	m, err := client.Resource(nodesResource).Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("reading node %s for its %s label: %w", node, config.NodeLabel, err)
	}
	return m.Labels[config.NodeLabel], nil
}
