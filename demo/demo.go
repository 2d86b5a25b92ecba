// Package demo runs gpublocks end to end on simulated hardware: the real
// daemon serves simulated GPUs over real sockets to a kubelet stand-in,
// example containers are admitted as the kubelet would admit them, and what
// each receives is printed, with its CDI devices injected into an OCI spec
// the way containerd does.
package demo

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/gpublocks/gpublocks/blocks"
	"github.com/gpublocks/gpublocks/daemon"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/gpu/sim"
	"github.com/gpublocks/gpublocks/plugin/fakekubelet"
)

// DefaultPreset has whole, MIG and (with the demo config) blocks GPUs.
const DefaultPreset = "dgxa100-mig"

// demoConfig puts GPUs 2 and 3 in blocks shape; the preset has MIG on
// GPUs 0 and 1, so the demo shows all three shapes. A short quiet period
// lets the demo show a faulted GPU recover.
const demoConfig = `version: v1
health:
  quietPeriod: 1s
gpus:
  - match: {index: [2, 3]}
    shape: blocks
`

// Options configure the demo.
type Options struct {
	Simulate   string
	ConfigPath string
}

// request is one example container.
type request struct {
	pod      string
	resource string // without domain
	count    int
	why      string
}

var examples = []request{
	{"train", "gpu", 2, "two whole GPUs for a training job"},
	{"notebook", "mig-1g.10gb", 1, "a hardware-isolated 1g.10gb MIG slice"},
	{"analytics", "mig-3g.40gb", 1, "a larger MIG slice"},
	{"infer-a", "gpu-blocks", 30, "30% of one GPU"},
	{"too-big", "gpu-blocks", 150, "150 blocks: more than one GPU but not whole GPUs, refused"},
	{"infer-b", "gpu-blocks", 50, "50% — binpack puts it on the same GPU as infer-a"},
	{"batch", "gpu-blocks", 60, "60% — does not fit beside them, takes the other blocks GPU"},
	{"etl", "gpu-blocks", 20, "20% — fills the first GPU to 100%"},
}

// Run runs the demo and writes its report to w.
func Run(ctx context.Context, w io.Writer, o Options) (err error) {
	if o.Simulate == "" {
		o.Simulate = DefaultPreset
	}
	dir, err := os.MkdirTemp("", "gpublocks-demo")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	pluginDir, cdiDir := filepath.Join(dir, "dp"), filepath.Join(dir, "cdi")
	if err := os.MkdirAll(pluginDir, 0o755); err != nil {
		return err
	}
	// With its own config on the default preset, the demo also gives GPU
	// 1 a MIG layout, to switch it from day to night at the end.
	dayNight := o.ConfigPath == "" && o.Simulate == DefaultPreset
	if o.ConfigPath == "" {
		o.ConfigPath = filepath.Join(dir, "config.yaml")
		cfg := demoConfig
		if dayNight {
			cfg = configWithLayout(dayLayout)
		}
		if err := os.WriteFile(o.ConfigPath, []byte(cfg), 0o644); err != nil {
			return err
		}
	}
	kubelet, err := fakekubelet.Start(pluginDir)
	if err != nil {
		return err
	}
	defer kubelet.Stop()

	// The stand-in's PodResources API tells the daemon what the demo's
	// containers hold, so a MIG layout change waits for them.
	pr := &podResources{pods: map[string]map[string][]string{}}
	prSocket := filepath.Join(dir, "pod-resources.sock")
	stopPR, err := servePodResources(prSocket, pr)
	if err != nil {
		return err
	}
	defer stopPR()

	opts := daemon.Options{ConfigPath: o.ConfigPath, PluginDir: pluginDir, CDIDir: cdiDir, Simulate: o.Simulate, DriverRoot: "/", DevRoot: "/",
		PodResourcesSocket: prSocket, DeferPollInterval: 100 * time.Millisecond}
	backend, err := daemon.OpenBackend(ctx, opts)
	if err != nil {
		return err
	}
	defer func() { _ = backend.Close() }()
	d, err := daemon.New(ctx, opts, backend)
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- d.Run(runCtx) }()
	defer func() {
		cancel()
		if serveErr := <-done; err == nil {
			err = serveErr
		}
	}()
	waitCtx, waitCancel := context.WithTimeout(ctx, 15*time.Second)
	defer waitCancel()
	if err := d.Manager().WaitRegistered(waitCtx); err != nil {
		return fmt.Errorf("plugin did not register with the kubelet stand-in: %w", err)
	}

	st := d.State()
	fmt.Fprintf(w, "gpublocks demo: simulated node %q, served over real device-plugin sockets in %s\n\n", o.Simulate, pluginDir)
	if err := st.WriteReport(w, backend.Name()); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nThe kubelet stand-in sees:\n")
	for _, name := range st.ResourceNames() {
		p, err := kubelet.Plugin(waitCtx, name)
		if err != nil {
			return err
		}
		if err := p.WaitFor(waitCtx, func(d []*pluginapi.Device) bool { return len(d) > 0 }); err != nil {
			return err
		}
		fmt.Fprintf(w, "  %-28s capacity %d, healthy %d\n", name, len(p.Devices()), p.Healthy())
	}

	cache, err := cdiapi.NewCache(cdiapi.WithSpecDirs(cdiDir), cdiapi.WithAutoRefresh(false))
	if err != nil {
		return err
	}
	if errs := cache.GetErrors(); len(errs) > 0 {
		return fmt.Errorf("the CDI spec gpublocks wrote does not load: %v", errs)
	}
	fmt.Fprintf(w, "\nCDI spec: %s (%d devices)\n", filepath.Join(cdiDir, "gpublocks.io-gpu.yaml"), len(cache.ListDevices()))

	domain := st.Config.ResourceDomain
	var holders []holder
	for _, ex := range examples {
		name := domain + "/" + ex.resource
		if ex.resource == "gpu-blocks" {
			name = st.Config.ResourceName(st.Config.Blocks.ResourceName)
		}
		p, err := kubelet.Plugin(waitCtx, name)
		if err != nil {
			fmt.Fprintf(w, "\n== %s asks %s: %d (%s)\n   skipped: this node does not offer %s\n", ex.pod, name, ex.count, ex.why, name)
			continue
		}
		fmt.Fprintf(w, "\n== %s asks %s: %d (%s)\n", ex.pod, name, ex.count, ex.why)
		ids, resp, err := p.Allocate(ctx, ex.count)
		if err != nil {
			fmt.Fprintf(w, "   refused: %s\n", grpcMessage(err))
			continue
		}
		pr.add(ex.pod, name, ids)
		holders = append(holders, holder{pod: ex.pod, plugin: p, ids: ids})
		if err := describe(w, cache, st.Inventory, ids, resp); err != nil {
			return err
		}
	}
	if err := showFault(waitCtx, w, d, backend, kubelet); err != nil {
		return fmt.Errorf("fault demo: %w", err)
	}
	if sb, ok := backend.(*sim.Backend); ok && dayNight {
		migCtx, migCancel := context.WithTimeout(ctx, 15*time.Second)
		defer migCancel()
		if err := showDayNight(migCtx, w, d, sb, kubelet, o.ConfigPath, pr, holders); err != nil {
			return fmt.Errorf("day/night demo: %w", err)
		}
	}
	fmt.Fprintf(w, "\nDone: every container above received exactly the device nodes of what it was allocated (checked).\n")
	return nil
}

// describe prints what a container receives.
func describe(w io.Writer, cache *cdiapi.Cache, inv *gpu.Inventory, ids []string, resp *pluginapi.ContainerAllocateResponse) error {
	fmt.Fprintf(w, "   devices:  %s\n", summarize(ids))
	var names []string
	for _, c := range resp.CdiDevices {
		names = append(names, c.Name)
	}
	fmt.Fprintf(w, "   CDI:      %s\n", orNone(strings.Join(names, ", ")))
	var env []string
	for k, v := range resp.Envs {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	fmt.Fprintf(w, "   env:      %s\n", orNone(strings.Join(env, " ")))
	if len(resp.Annotations) > 0 {
		fmt.Fprintf(w, "   annotations: %v\n", resp.Annotations)
	}
	if len(resp.Mounts)+len(resp.Devices) > 0 {
		fmt.Fprintf(w, "   mounts: %d, device specs: %d\n", len(resp.Mounts), len(resp.Devices))
	}
	spec := &oci.Spec{Process: &oci.Process{}, Linux: &oci.Linux{}}
	if _, err := cache.InjectDevices(spec, names...); err != nil {
		return fmt.Errorf("injecting %v: %w", names, err)
	}
	var nodes []string
	for _, d := range spec.Linux.Devices {
		nodes = append(nodes, fmt.Sprintf("%s (%s %d:%d)", d.Path, d.Type, d.Major, d.Minor))
	}
	fmt.Fprintf(w, "   nodes:    %s\n", orNone(strings.Join(nodes, ", ")))
	if err := checkOwned(inv, ids, spec.Linux.Devices); err != nil {
		return err
	}
	fmt.Fprintf(w, "   CDI env:  %s, %d driver mounts\n", orNone(strings.Join(spec.Process.Env, " ")), len(spec.Mounts))
	return nil
}

// checkOwned verifies what the demo claims: the GPU and capability nodes a
// container received are exactly those of the devices it was allocated
// (its GPUs, or its MIG devices' parents and their two capabilities);
// control nodes aside, nothing more.
func checkOwned(inv *gpu.Inventory, ids []string, got []oci.LinuxDevice) error {
	want := map[string]bool{}
	for _, id := range ids {
		if uuid, _, err := blocks.ParseID(id); err == nil {
			id = uuid
		}
		for _, g := range inv.GPUs {
			if g.UUID == id {
				want[g.Node.Path] = true
			}
			for _, m := range g.MigDevices {
				if m.UUID == id {
					want[g.Node.Path] = true
					for _, c := range m.CapNodes {
						want[c.Path] = true
					}
				}
			}
		}
	}
	control := map[string]bool{}
	for _, c := range inv.ControlNodes {
		control[c.Path] = true
	}
	have := map[string]bool{}
	for _, d := range got {
		if !control[d.Path] {
			have[d.Path] = true
		}
	}
	if !maps.Equal(want, have) {
		return fmt.Errorf("devices %v: the container received nodes %v, but owns %v", ids, slices.Sorted(maps.Keys(have)), slices.Sorted(maps.Keys(want)))
	}
	return nil
}

// summarize folds block IDs into "<n> blocks of <uuid>".
func summarize(ids []string) string {
	perGPU := map[string]int{}
	var order, plain []string
	for _, id := range ids {
		if uuid, _, err := blocks.ParseID(id); err == nil {
			if perGPU[uuid] == 0 {
				order = append(order, uuid)
			}
			perGPU[uuid]++
			continue
		}
		plain = append(plain, id)
	}
	for _, u := range order {
		plain = append(plain, fmt.Sprintf("%d blocks of %s", perGPU[u], u))
	}
	return strings.Join(plain, ", ")
}

// grpcMessage is the plugin's own words, without the gRPC wrapping.
func grpcMessage(err error) string {
	if st, ok := status.FromError(err); ok {
		return st.Message()
	}
	return err.Error()
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
