// Package fakekubelet is a small stand-in for the kubelet's device manager,
// speaking the real device-plugin API over real unix sockets: it accepts
// registrations on <dir>/kubelet.sock, dials each plugin, follows its
// ListAndWatch stream, and allocates the way the kubelet does (ask
// GetPreferredAllocation, take the preference, fill the rest from the free
// devices, then Allocate). The demo and the tests use it; the e2e tests in
// tests/ use the kubelet's own code instead.
package fakekubelet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// Kubelet is the registration side.
type Kubelet struct {
	pluginapi.UnimplementedRegistrationServer

	dir string
	srv *grpc.Server

	mu      sync.Mutex
	plugins map[string]*Plugin
	changed chan struct{} // closed and replaced on every registration
}

// Start serves the registration API on <dir>/kubelet.sock.
func Start(dir string) (*Kubelet, error) {
	sock := filepath.Join(dir, "kubelet.sock")
	_ = os.Remove(sock)
	lis, err := net.Listen("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("fake kubelet: %w", err)
	}
	k := &Kubelet{dir: dir, srv: grpc.NewServer(), plugins: map[string]*Plugin{}, changed: make(chan struct{})}
	pluginapi.RegisterRegistrationServer(k.srv, k)
	go func() { _ = k.srv.Serve(lis) }()
	return k, nil
}

// Stop shuts the registration server down and removes kubelet.sock, as a
// stopping kubelet does; plugin connections are closed.
func (k *Kubelet) Stop() {
	k.srv.Stop()
	_ = os.Remove(filepath.Join(k.dir, "kubelet.sock"))
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, p := range k.plugins {
		p.close()
	}
	k.plugins = map[string]*Plugin{}
}

// Register implements the registration API: it dials the plugin and starts
// following its device list.
func (k *Kubelet) Register(_ context.Context, req *pluginapi.RegisterRequest) (*pluginapi.Empty, error) {
	if req.Version != pluginapi.Version {
		return nil, fmt.Errorf("unsupported API version %q", req.Version)
	}
	conn, err := grpc.NewClient("unix://"+filepath.Join(k.dir, req.Endpoint), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Plugin{
		Resource:  req.ResourceName,
		Options:   req.Options,
		Client:    pluginapi.NewDevicePluginClient(conn),
		conn:      conn,
		cancel:    cancel,
		allocated: map[string]bool{},
		changed:   make(chan struct{}),
	}
	stream, err := p.Client.ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		p.close()
		return nil, err
	}
	go p.follow(stream)
	k.mu.Lock()
	if old := k.plugins[req.ResourceName]; old != nil {
		old.close()
		p.allocated = old.allocated // the kubelet keeps its checkpoint
	}
	k.plugins[req.ResourceName] = p
	close(k.changed)
	k.changed = make(chan struct{})
	k.mu.Unlock()
	return &pluginapi.Empty{}, nil
}

// Resources lists the registered resource names, sorted.
func (k *Kubelet) Resources() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	names := make([]string, 0, len(k.plugins))
	for n := range k.plugins {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Plugin waits until resource is registered and returns it.
func (k *Kubelet) Plugin(ctx context.Context, resource string) (*Plugin, error) {
	for {
		k.mu.Lock()
		p, ch := k.plugins[resource], k.changed
		k.mu.Unlock()
		if p != nil {
			return p, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("resource %s never registered: %w", resource, ctx.Err())
		case <-ch:
		}
	}
}

// Plugin is one registered resource as the kubelet sees it.
type Plugin struct {
	Resource string
	Options  *pluginapi.DevicePluginOptions
	Client   pluginapi.DevicePluginClient

	conn   *grpc.ClientConn
	cancel context.CancelFunc

	mu        sync.Mutex
	devices   []*pluginapi.Device
	first     []*pluginapi.Device // the first list streamed
	updates   int
	allocated map[string]bool
	changed   chan struct{}
}

func (p *Plugin) close() {
	p.cancel()
	_ = p.conn.Close()
}

func (p *Plugin) follow(stream pluginapi.DevicePlugin_ListAndWatchClient) {
	for {
		resp, err := stream.Recv()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.devices = resp.Devices
		if p.updates == 0 {
			p.first = resp.Devices
		}
		p.updates++
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
	}
}

// Devices returns the last device list the plugin streamed.
func (p *Plugin) Devices() []*pluginapi.Device {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.devices
}

// FirstDevices returns the first device list the plugin streamed after
// registering (nil before it arrives): what the kubelet saw first.
func (p *Plugin) FirstDevices() []*pluginapi.Device {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.first
}

// Healthy counts the healthy devices in the last list.
func (p *Plugin) Healthy() int {
	n := 0
	for _, d := range p.Devices() {
		if d.Health == pluginapi.Healthy {
			n++
		}
	}
	return n
}

// WaitFor waits until cond holds for the streamed device list.
func (p *Plugin) WaitFor(ctx context.Context, cond func([]*pluginapi.Device) bool) error {
	for {
		p.mu.Lock()
		devs, updates, ch := p.devices, p.updates, p.changed
		p.mu.Unlock()
		if updates > 0 && cond(devs) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: condition not met: %w", p.Resource, ctx.Err())
		case <-ch:
		}
	}
}

// ErrInsufficient means fewer healthy free devices than requested.
var ErrInsufficient = errors.New("not enough free devices")

// Allocate admits one container asking for n devices, as the kubelet does.
// It returns the device IDs chosen and the plugin's answer.
func (p *Plugin) Allocate(ctx context.Context, n int) ([]string, *pluginapi.ContainerAllocateResponse, error) {
	p.mu.Lock()
	var free []string
	for _, d := range p.devices {
		if d.Health == pluginapi.Healthy && !p.allocated[d.ID] {
			free = append(free, d.ID)
		}
	}
	p.mu.Unlock()
	sort.Strings(free)
	if n > len(free) {
		return nil, nil, fmt.Errorf("%s: asked %d, %d free: %w", p.Resource, n, len(free), ErrInsufficient)
	}
	chosen := []string{}
	if p.Options != nil && p.Options.GetPreferredAllocationAvailable {
		resp, err := p.Client.GetPreferredAllocation(ctx, &pluginapi.PreferredAllocationRequest{
			ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{AvailableDeviceIDs: free, AllocationSize: int32(n)}},
		})
		if err != nil {
			return nil, nil, err
		}
		chosen = append(chosen, resp.ContainerResponses[0].DeviceIDs...)
	}
	// The kubelet fills a short preference from the free devices.
	picked := map[string]bool{}
	for _, id := range chosen {
		picked[id] = true
	}
	for _, id := range free {
		if len(chosen) >= n {
			break
		}
		if !picked[id] {
			chosen = append(chosen, id)
		}
	}
	chosen = chosen[:n]
	resp, err := p.Client.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: chosen}}})
	if err != nil {
		return chosen, nil, err
	}
	p.mu.Lock()
	for _, id := range chosen {
		p.allocated[id] = true
	}
	p.mu.Unlock()
	return chosen, resp.ContainerResponses[0], nil
}

// Release frees devices, as when a pod ends.
func (p *Plugin) Release(ids []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, id := range ids {
		delete(p.allocated, id)
	}
}
