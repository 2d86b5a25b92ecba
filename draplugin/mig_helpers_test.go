package draplugin

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/stretchr/testify/require"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/dra"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/gpu/sim"
	migapi "github.com/gpublocks/gpublocks/mig"
	"github.com/gpublocks/gpublocks/shape"
)

// migEnv is a simulated node whose MIG instances the driver creates: GPU 0
// is an A100 40 GB with MIG on and the given instances (none for
// `mig: []`), GPU 1 an A100 80 GB without MIG.
type migEnv struct {
	t    testing.TB
	b    *sim.Backend
	opts Options
	cfg  *config.Config
	mgr  *simMIG

	mu  sync.Mutex
	inv *gpu.Inventory
}

// simMIG is the MIG manager serve uses (internal/draserve.MIGManager),
// over the simulator through package mig; Refresh discovers the GPUs again
// and publishes the new pool to drv, as the daemon's rescan does.
type simMIG struct {
	e         *migEnv
	drv       atomic.Pointer[Driver]
	refreshes atomic.Int32
	// republish off: Refresh only counts, so the pool stays as it was.
	noRepublish bool
}

func newMIGEnv(t testing.TB, instances string) *migEnv {
	t.Helper()
	root := t.TempDir()
	file := filepath.Join(root, "sim.yaml")
	require.NoError(t, os.WriteFile(file, []byte("gpus:\n  - model: A100-SXM4-40GB\n    mig: "+instances+"\n  - model: A100-SXM4-80GB\n"), 0o600))
	b, err := sim.New(file)
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	e := &migEnv{
		t: t, b: b, cfg: config.Default(),
		opts: Options{
			NodeName:     testNode,
			KubeClient:   fake.NewClientset(),
			RegistrarDir: filepath.Join(root, "plugins_registry"),
			PluginsDir:   filepath.Join(root, "plugins"),
			CDIDir:       filepath.Join(root, "cdi"),
		},
	}
	e.mgr = &simMIG{e: e}
	e.opts.MIG = e.mgr
	e.discover()
	return e
}

func (e *migEnv) discover() *gpu.Inventory {
	inv, err := gpu.Discover(context.Background(), e.b)
	require.NoError(e.t, err)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.inv = inv
	return inv
}

func (e *migEnv) pool() dra.Pool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return dra.BuildPool(dra.PoolInput{Offers: shape.Offers(e.inv, e.cfg, nil), DriverVersion: e.inv.DriverVersion})
}

// driver starts a driver over e's directories and backend and publishes
// the pool as discovered now.
func (e *migEnv) driver() *Driver {
	e.t.Helper()
	d, err := newDriver(context.Background(), e.opts)
	require.NoError(e.t, err)
	e.mgr.drv.Store(d)
	e.discover()
	require.NoError(e.t, d.Publish(context.Background(), e.pool(), e.inv))
	return d
}

// instances lists GPU 0's MIG instances as NVML reports them.
func (e *migEnv) instances() []migapi.Instance {
	e.t.Helper()
	dev, ret := e.b.NVML().DeviceGetHandleByIndex(0)
	require.Equal(e.t, nvml.SUCCESS, ret)
	st, err := migapi.Read(dev)
	require.NoError(e.t, err)
	return st.Instances
}

func (e *migEnv) gpu0() nvml.Device {
	dev, ret := e.b.NVML().DeviceGetHandleByIndex(0)
	require.Equal(e.t, nvml.SUCCESS, ret)
	return dev
}

func (m *simMIG) device(gpuUUID string) (nvml.Device, error) {
	dev, ret := m.e.b.NVML().DeviceGetHandleByUUID(gpuUUID)
	if ret != nvml.SUCCESS {
		return nil, ret
	}
	return dev, nil
}

func (m *simMIG) Create(ctx context.Context, gpuUUID, profile string, start int) (string, bool, error) {
	dev, err := m.device(gpuUUID)
	if err != nil {
		return "", false, err
	}
	in, created, err := migapi.Create(ctx, dev, profile, start)
	if err != nil {
		return "", false, err
	}
	return in.UUID(), created, nil
}

func (m *simMIG) Destroy(ctx context.Context, gpuUUID, migUUID string) error {
	dev, err := m.device(gpuUUID)
	if err != nil {
		return err
	}
	st, err := migapi.Read(dev)
	if err != nil {
		return err
	}
	for _, in := range st.Instances {
		if in.UUID() == migUUID {
			return migapi.Destroy(ctx, dev, in.GI)
		}
	}
	return migapi.ErrNotFound
}

func (m *simMIG) Refresh(ctx context.Context) error {
	m.refreshes.Add(1)
	if m.noRepublish {
		return nil
	}
	inv := m.e.discover()
	return m.drv.Load().Publish(ctx, m.e.pool(), inv)
}
