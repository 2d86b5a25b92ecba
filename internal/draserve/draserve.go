// Package draserve is DRA mode's half of `gpublocks serve` and `inspect`:
// it connects to the API server, starts the kubelet DRA plugin (package
// draplugin) and publishes the daemon's states through it as the node's
// pool (package dra). It links client-go and the Kubernetes API types,
// whose package initialisation alone costs a device plugin more than half
// its memory, so only the gpublocks-dra executable imports it; gpublocks
// hands DRA mode to that executable (internal/cli).
package draserve

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/yaml"

	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/daemon"
	"github.com/gpublocks/gpublocks/dra"
	"github.com/gpublocks/gpublocks/draplugin"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/internal/cli"
	"github.com/gpublocks/gpublocks/metrics"
	"github.com/gpublocks/gpublocks/shape"
)

// Flags are DRA mode's command-line settings beyond daemon.Options.
type Flags struct {
	Kubeconfig   string // "" = in-cluster
	RegistrarDir string
	PluginsDir   string
}

// Start connects to the API server (Flags.Kubeconfig, else in-cluster),
// starts the kubelet DRA plugin and makes it o's publisher. The node
// label is then read with the same credentials. With mig, the plugin
// creates MIG instances for claims of published placements and destroys
// them again (draplugin.Options.MIG; the caller wires mig.SetRefresh once
// the daemon exists); nil serves existing MIG devices only.
func Start(ctx context.Context, o *daemon.Options, f Flags, mig *MIGManager) (*draplugin.Driver, error) {
	cfg, err := restConfig(f.Kubeconfig)
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
	opts := draplugin.Options{
		NodeName:     o.NodeName,
		KubeClient:   client,
		RegistrarDir: f.RegistrarDir,
		PluginsDir:   f.PluginsDir,
		CDIDir:       o.CDIDir,
		CDIKind:      o.CDIKind,
	}
	if mig != nil {
		// Never a nil *MIGManager in the interface: nil means "none".
		opts.MIG = mig
	}
	drv, err := draplugin.Start(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("starting the DRA plugin: %w", err)
	}
	klog.FromContext(ctx).Info("DRA plugin started", "node", o.NodeName, "registrarDir", f.RegistrarDir, "pluginsDir", f.PluginsDir)
	o.Publisher = NewPublisher(drv)
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

// PoolOf builds the pool a state publishes: its offers as devices and
// counters, unhealthy GPUs' devices tainted with the config's effect.
func PoolOf(st *daemon.State) dra.Pool {
	return dra.BuildPool(dra.PoolInput{
		Offers:        st.Offers,
		DriverVersion: st.Inventory.DriverVersion,
		Unhealthy:     st.Faults,
		TaintEffect:   taintEffect(st.Config),
	})
}

// taintEffect maps the config's health.draTaintEffect to the API's.
func taintEffect(cfg *config.Config) resourceapi.DeviceTaintEffect {
	if cfg.Health.DRATaintEffect == config.TaintNoExecute {
		return resourceapi.DeviceTaintEffectNoExecute
	}
	return resourceapi.DeviceTaintEffectNoSchedule
}

// driver is what the publisher needs of draplugin.Driver.
type driver interface {
	Publish(ctx context.Context, pool dra.Pool, inv *gpu.Inventory) error
	Prepared() []draplugin.PreparedDevice
	Registered() bool
}

// Publisher publishes daemon states through the DRA plugin
// (daemon.Publisher).
type Publisher struct{ drv driver }

// NewPublisher publishes through drv.
func NewPublisher(drv driver) *Publisher { return &Publisher{drv: drv} }

// Check refuses a state whose pool would stop publishing a prepared
// device: the scheduler counts what an allocated device consumes only
// through the published device, and could hand its GPU out again. The
// daemon keeps such GPUs' offers (its kept offers); this is the last line.
func (p *Publisher) Check(st *daemon.State) error { return p.check(PoolOf(st)) }

func (p *Publisher) check(pool dra.Pool) error {
	published := map[string]bool{}
	for _, d := range pool.Devices {
		published[d.Name] = true
	}
	var missing []string
	for _, d := range p.drv.Prepared() {
		if !published[d.Device] {
			missing = append(missing, d.Device)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return fmt.Errorf("the new pool leaves out prepared devices %s; it applies once their claims are released", strings.Join(slices.Compact(missing), ", "))
	}
	return nil
}

// Publish hands the state's pool to the plugin's ResourceSlice controller.
func (p *Publisher) Publish(ctx context.Context, st *daemon.State) error {
	pool := PoolOf(st)
	if err := p.check(pool); err != nil {
		return err
	}
	return p.drv.Publish(ctx, pool, st.Inventory)
}

// Registered reports whether the kubelet registered the plugin.
func (p *Publisher) Registered() bool { return p.drv.Registered() }

// Served counts the published devices per DeviceClass, tainted ones as
// unhealthy.
func (p *Publisher) Served(st *daemon.State) []metrics.Resource {
	byClass := map[string]*metrics.Resource{}
	for _, d := range PoolOf(st).Devices {
		typ := ""
		if a, ok := d.Attributes["type"]; ok && a.StringValue != nil {
			typ = *a.StringValue
		}
		name := DeviceClass(typ)
		c := byClass[name]
		if c == nil {
			c = &metrics.Resource{Name: name}
			byClass[name] = c
		}
		if len(d.Taints) > 0 {
			c.Unhealthy++
		} else {
			c.Healthy++
		}
	}
	out := make([]metrics.Resource, 0, len(byClass))
	for _, name := range slices.Sorted(maps.Keys(byClass)) {
		out = append(out, *byClass[name])
	}
	return out
}

// Prepared lists the prepared devices in the daemon's terms.
func (p *Publisher) Prepared() []daemon.PreparedDevice {
	prepared := p.drv.Prepared()
	out := make([]daemon.PreparedDevice, len(prepared))
	for i, d := range prepared {
		out[i] = daemon.PreparedDevice{Device: d.Device, Shape: shapeOf(d.Type), GPUUUID: d.GPUUUID, UUID: d.UUID}
	}
	return out
}

func shapeOf(typ string) string {
	switch typ {
	case dra.TypeBlocks:
		return shape.Blocks
	case dra.TypeMIG:
		return shape.MIG
	}
	return shape.Whole
}

// DeviceClass names the DeviceClass that selects devices of a type
// (DESIGN §9): gpu.gpublocks.io, blocks.gpu.gpublocks.io,
// mig.gpu.gpublocks.io.
func DeviceClass(typ string) string {
	if typ == dra.TypeGPU {
		return dra.DriverName
	}
	return typ + "." + dra.DriverName
}

// WriteResourceSlices prints the ResourceSlices serve would publish for
// node (the host name when empty), as a YAML stream.
func WriteResourceSlices(w io.Writer, st *daemon.State, node string) error {
	if node == "" {
		var err error
		if node, err = os.Hostname(); err != nil {
			return fmt.Errorf("no --node-name and no host name: %w", err)
		}
	}
	for i, s := range PoolOf(st).ResourceSlices(node, 1) {
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

var _ daemon.Publisher = (*Publisher)(nil)

// CLI is DRA mode for the command line (cli.Main).
func CLI() *cli.DRA {
	return &cli.DRA{
		Start: func(ctx context.Context, o *daemon.Options, f cli.DRAFlags, b gpu.Backend) (cli.DRADriver, error) {
			m := NewMIGManager(b)
			drv, err := Start(ctx, o, Flags(f), m)
			if err != nil {
				return nil, err
			}
			return &running{Driver: drv, mig: m}, nil
		},
		WriteSlices: WriteResourceSlices,
	}
}

// running is the started plugin with its MIG manager, which rescans
// through the daemon once Bind has handed it over.
type running struct {
	*draplugin.Driver
	mig *MIGManager
}

// Bind makes a MIG instance created for a claim reach the base CDI spec
// and the pool before prepare answers: a synchronous daemon rescan. Until
// then (the daemon does not exist yet) a claim needing a new instance is
// refused and retried by the kubelet.
func (r *running) Bind(d *daemon.Daemon) { r.mig.SetRefresh(d.RescanNow) }
