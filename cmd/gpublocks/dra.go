package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/yaml"

	"github.com/gpublocks/gpublocks/daemon"
	"github.com/gpublocks/gpublocks/draplugin"
)

// startDRA connects to the API server (--kubeconfig, else in-cluster),
// starts the kubelet DRA plugin and makes it o's DRA driver. The node
// label is then read with the same credentials.
func startDRA(ctx context.Context, o *daemon.Options, df draFlags) (*draplugin.Driver, error) {
	cfg, err := restConfig(df.kubeconfig)
	if err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("API client: %w", err)
	}
	if o.NodeClient == nil {
		hc, err := rest.HTTPClientFor(cfg)
		if err != nil {
			return nil, fmt.Errorf("API client: %w", err)
		}
		o.NodeClient = daemon.NewNodeAPI(cfg.Host, hc, "")
	}
	drv, err := draplugin.Start(ctx, draplugin.Options{
		NodeName:     o.NodeName,
		KubeClient:   client,
		RegistrarDir: df.registrarDir,
		PluginsDir:   df.pluginsDir,
		CDIDir:       o.CDIDir,
		CDIKind:      o.CDIKind,
	})
	if err != nil {
		return nil, fmt.Errorf("starting the DRA plugin: %w", err)
	}
	klog.FromContext(ctx).Info("DRA plugin started", "node", o.NodeName, "registrarDir", df.registrarDir, "pluginsDir", df.pluginsDir)
	o.DRA = draAdapter{drv}
	return drv, nil
}

// restConfig loads kubeconfig, or the pod's in-cluster credentials when it
// is empty.
func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("--kubeconfig %s: %w", kubeconfig, err)
		}
		return cfg, nil
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("no API server credentials: %w (outside a pod, pass --kubeconfig)", err)
	}
	return cfg, nil
}

// draAdapter shows the driver to the daemon, which knows no client-go.
type draAdapter struct{ *draplugin.Driver }

func (a draAdapter) PreparedDevices() []daemon.PreparedDevice {
	prepared := a.Prepared()
	out := make([]daemon.PreparedDevice, len(prepared))
	for i, p := range prepared {
		out[i] = daemon.PreparedDevice{Device: p.Device, Type: p.Type, GPUUUID: p.GPUUUID, UUID: p.UUID}
	}
	return out
}

// writeResourceSlices prints the ResourceSlices serve would publish for
// node (the host name when empty), as a YAML stream.
func writeResourceSlices(w io.Writer, st *daemon.State, node string) error {
	if node == "" {
		var err error
		if node, err = os.Hostname(); err != nil {
			return fmt.Errorf("no --node-name and no host name: %w", err)
		}
	}
	for i, s := range st.Pool.ResourceSlices(node, 1) {
		data, err := yaml.Marshal(s)
		if err != nil {
			return err
		}
		if i > 0 {
			if _, err := io.WriteString(w, "---\n"); err != nil {
				return err
			}
		}
		if _, err := w.Write(data); err != nil {
			return err
		}
	}
	return nil
}
