package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/gpublocks/gpublocks/config"
)

var nodesResource = schema.GroupVersionResource{Version: "v1", Resource: "nodes"}

// errNotInCluster means there is no API server to ask for the node's label.
var errNotInCluster = errors.New("not running in a cluster")

// NodeClient opens the metadata client for the node's label: only object
// metadata is fetched, so the plugin needs no more than get/list/watch on
// nodes and carries no typed API machinery.
func NodeClient() (metadata.Interface, error) {
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNotInCluster, err)
	}
	cfg.UserAgent = "gpublocks"
	return metadata.NewForConfig(cfg)
}

// watchNodeLabel follows the gpublocks.io/config label of one node and calls
// onChange with its value ("" when absent) first once the node is known,
// then on every change. It returns when ctx is done.
func watchNodeLabel(ctx context.Context, client metadata.Interface, node string, onChange func(string)) {
	logger := klog.FromContext(ctx).WithValues("node", node)
	// A plain informer over the metadata client: client-go's metadata
	// informer factory would link every typed informer into the binary.
	sel := fields.OneTermEqualSelector("metadata.name", node).String()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = sel
			return client.Resource(nodesResource).List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = sel
			return client.Resource(nodesResource).Watch(ctx, o)
		},
	}
	// The wrapper lets the reflector fall back to list+watch for clients
	// (and fakes) without watch-list support.
	inf := cache.NewSharedIndexInformer(cache.ToListWatcherWithWatchListSemantics(lw, client), &metav1.PartialObjectMetadata{}, 10*time.Minute, cache.Indexers{})
	last, seen := "", false
	report := func(obj any) {
		m, ok := obj.(*metav1.PartialObjectMetadata)
		if !ok || m.Name != node {
			return
		}
		v := m.Labels[config.NodeLabel]
		if seen && v == last {
			return
		}
		logger.Info("Node config label", "label", config.NodeLabel, "value", v)
		last, seen = v, true
		onChange(v)
	}
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    report,
		UpdateFunc: func(_, obj any) { report(obj) },
	})
	if err != nil {
		logger.Error(err, "Cannot watch the node's config label")
		return
	}
	inf.RunWithContext(ctx)
}
