package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpublocks/gpublocks/daemon"
	"github.com/gpublocks/gpublocks/gpu/sim"
	"github.com/gpublocks/gpublocks/plugin/fakekubelet"
)

// The demo config's GPU 1 holds seven 1g.10gb slices by day (as the preset
// made it) and two 3g.40gb slices by night (DESIGN §10).
const (
	dayLayout   = "[1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb]"
	nightLayout = "[3g.40gb, 3g.40gb]"
	layoutGPU   = 1
)

// configWithLayout is the demo config with GPU 1's MIG layout.
func configWithLayout(layout string) string {
	return demoConfig + fmt.Sprintf("  - match: {index: [%d]}\n    shape: mig\n    mig: %s\n", layoutGPU, layout)
}

// podResources is the kubelet stand-in's PodResources API: the devices the
// demo's containers hold, which the daemon asks before it changes a GPU.
type podResources struct {
	podresourcesapi.UnimplementedPodResourcesListerServer
	mu   sync.Mutex
	pods map[string]map[string][]string // pod → resource → device IDs
}

func (p *podResources) add(pod, resource string, ids []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pods[pod] = map[string][]string{resource: ids}
}

func (p *podResources) remove(pod string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.pods, pod)
}

func (p *podResources) List(context.Context, *podresourcesapi.ListPodResourcesRequest) (*podresourcesapi.ListPodResourcesResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	resp := &podresourcesapi.ListPodResourcesResponse{}
	for _, pod := range slices.Sorted(maps.Keys(p.pods)) {
		c := &podresourcesapi.ContainerResources{Name: "main"}
		for r, ids := range p.pods[pod] {
			c.Devices = append(c.Devices, &podresourcesapi.ContainerDevices{ResourceName: r, DeviceIds: ids})
		}
		resp.PodResources = append(resp.PodResources, &podresourcesapi.PodResources{Name: pod, Namespace: "demo", Containers: []*podresourcesapi.ContainerResources{c}})
	}
	return resp, nil
}

// servePodResources serves p on a unix socket at path until stop is called.
func servePodResources(path string, p *podResources) (stop func(), err error) {
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	srv := grpc.NewServer()
	podresourcesapi.RegisterPodResourcesListerServer(srv, p)
	go func() { _ = srv.Serve(lis) }()
	return srv.Stop, nil
}

// holder is a demo container that holds devices.
type holder struct {
	pod    string
	plugin *fakekubelet.Plugin
	ids    []string
}

// showDayNight switches GPU 1 from the day layout to the night layout by
// rewriting the config, as the day/night CronJob's label flip would: the
// change waits while a CUDA process runs in one of GPU 1's slices (or a
// container holds one), and applies once it ends.
func showDayNight(ctx context.Context, w io.Writer, d *daemon.Daemon, sb *sim.Backend, kubelet *fakekubelet.Kubelet, configPath string, pr *podResources, holders []holder) error {
	st := d.State()
	if st == nil || len(st.MigLayouts) == 0 || len(st.Inventory.GPUs) <= layoutGPU || len(st.Inventory.GPUs[layoutGPU].MigDevices) == 0 {
		return nil
	}
	domain := st.Config.ResourceDomain
	small, large := domain+"/mig-1g.10gb", domain+"/mig-3g.40gb"
	capacity := func(name string) int {
		p, err := kubelet.Plugin(ctx, name)
		if err != nil {
			return 0
		}
		return p.Healthy()
	}
	fmt.Fprintf(w, "\n== Day -> night: the config asks GPU %d for mig: %s instead of %s\n", layoutGPU, nightLayout, dayLayout)
	fmt.Fprintf(w, "   before: %s capacity %d, %s capacity %d\n", small, capacity(small), large, capacity(large))
	busy := st.Inventory.GPUs[layoutGPU].MigDevices[0].UUID
	pid, err := sb.StartProcess(layoutGPU, busy)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "   a CUDA process (pid %d, outside any pod) runs in %s on GPU %d\n", pid, busy, layoutGPU)
	tmp := configPath + ".tmp"
	if err := os.WriteFile(tmp, []byte(configWithLayout(nightLayout)), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, configPath); err != nil {
		return err
	}
	start := time.Now()

	// The config applies at once; GPU 1 follows when nothing uses it.
	status, err := waitMig(ctx, d, func(s daemon.MigLayoutStatus) bool {
		return len(s.Layout) == 2 && (s.Waiting != "" || !s.Pending())
	})
	if err != nil {
		return err
	}
	if status.Pending() {
		fmt.Fprintf(w, "   GPU %d waits: %s\n", layoutGPU, status.Waiting)
		fmt.Fprintf(w, "   (gpublocks_mig_layout_pending{gpu=\"%d\"} 1; %s still capacity %d)\n", layoutGPU, small, capacity(small))
		if err := sb.StopProcess(pid); err != nil {
			return err
		}
		fmt.Fprintf(w, "   the process ends\n")
		gpuUUID := status.UUID
		for _, h := range holders {
			if !holdsOn(d, gpuUUID, h.ids) {
				continue
			}
			h.plugin.Release(h.ids)
			pr.remove(h.pod)
			fmt.Fprintf(w, "   %s ends: its slice is released\n", h.pod)
		}
		if _, err := waitMig(ctx, d, func(s daemon.MigLayoutStatus) bool { return len(s.Layout) == 2 && !s.Pending() }); err != nil {
			return err
		}
	}
	p, err := kubelet.Plugin(ctx, large)
	if err != nil {
		return err
	}
	if err := p.WaitFor(ctx, func(devs []*pluginapi.Device) bool { return len(devs) == 3 }); err != nil {
		return err
	}
	var uuids []string
	for _, g := range d.State().Inventory.GPUs {
		if g.Index == layoutGPU {
			for _, m := range g.MigDevices {
				uuids = append(uuids, fmt.Sprintf("%s (%s, caps %s %s)", m.UUID, m.Profile, m.CapNodes[0].Path, m.CapNodes[1].Path))
			}
		}
	}
	fmt.Fprintf(w, "   after %s: %s capacity %d, %s capacity %d, no restart\n", time.Since(start).Round(10*time.Millisecond), small, capacity(small), large, capacity(large))
	for _, u := range uuids {
		fmt.Fprintf(w, "   GPU %d: %s\n", layoutGPU, u)
	}
	return nil
}

// holdsOn reports whether any of ids is a MIG device of the GPU gpuUUID.
func holdsOn(d *daemon.Daemon, gpuUUID string, ids []string) bool {
	for _, g := range d.State().Inventory.GPUs {
		if g.UUID != gpuUUID {
			continue
		}
		for _, m := range g.MigDevices {
			if slices.Contains(ids, m.UUID) {
				return true
			}
		}
	}
	return false
}

// waitMig waits until GPU 1's layout status in the served state meets
// cond.
func waitMig(ctx context.Context, d *daemon.Daemon, cond func(daemon.MigLayoutStatus) bool) (daemon.MigLayoutStatus, error) {
	for {
		if st := d.State(); st != nil {
			for _, s := range st.MigLayouts {
				if s.GPU == layoutGPU && cond(s) {
					return s, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return daemon.MigLayoutStatus{}, errors.New("GPU 1 did not reach its night layout: " + ctx.Err().Error())
		case <-time.After(10 * time.Millisecond):
		}
	}
}
