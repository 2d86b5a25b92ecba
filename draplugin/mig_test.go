package draplugin

import (
	"context"
	"os"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/stretchr/testify/require"
	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpublocks/gpublocks/dra"
	"github.com/gpublocks/gpublocks/gpu/sim"
	migapi "github.com/gpublocks/gpublocks/mig"
)

// publishedUUID is the uuid attribute a device has in the published pool.
func publishedUUID(d *Driver, name string) (string, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p, ok := d.devices[name]
	return p.uuid, ok
}

func TestPrepareMIGCreates(t *testing.T) {
	e := newMIGEnv(t, "[]")
	d := e.driver()
	const name = "gpu-0-mig-1g-5gb-3"
	uuid, ok := publishedUUID(d, name)
	require.True(t, ok, "every placement is published")
	require.Empty(t, uuid, "no instance yet")

	c := claim(uid(1), "small", mig("mig", name))
	res := mustPrepare(t, d, c)
	ins := e.instances()
	require.Len(t, ins, 1)
	require.Equal(t, "1g.5gb", ins[0].Profile)
	require.Equal(t, 3, ins[0].Placement.Start)
	migUUID := ins[0].UUID()
	require.NotEmpty(t, migUUID)
	require.Equal(t, []string{"gpublocks.io/gpu=" + migUUID, "gpublocks.io/claim=" + uid(1) + "-mig"}, res.Devices[0].CDIDeviceIDs)
	require.EqualValues(t, 1, e.mgr.refreshes.Load(), "the base spec is refreshed before prepare returns")
	got, _ := publishedUUID(d, name)
	require.Equal(t, migUUID, got, "the refreshed pool shows the instance under the same device name")
	require.Equal(t, []PreparedDevice{{Claim: c.UID, Request: "mig", Device: name, Type: dra.TypeMIG,
		GPUUUID: e.inv.GPUs[0].UUID, UUID: migUUID, Created: true}}, d.Prepared())

	// Idempotent: the same answer, no second instance, no refresh.
	again := mustPrepare(t, d, c)
	require.Equal(t, res, again)
	require.Len(t, e.instances(), 1)
	require.EqualValues(t, 1, e.mgr.refreshes.Load())

	require.NoError(t, unprepare(t, d, c))
	require.Empty(t, e.instances(), "unprepare destroys what prepare created")
	require.Empty(t, d.Prepared())
	require.EqualValues(t, 2, e.mgr.refreshes.Load(), "unprepare refreshes so that the placements come back")
	_, err := os.Stat(d.claimSpecs.Path(uid(1)))
	require.ErrorIs(t, err, os.ErrNotExist)
	require.NoError(t, unprepare(t, d, c), "unprepare is idempotent")
}

// An instance that was there before the claim is handed out, and stays.
func TestPrepareMIGReusesExisting(t *testing.T) {
	tests := map[string]struct {
		// made says how the instance came: before discovery (the pool
		// shows it with its uuid), or after (the pool shows a placement).
		before bool
	}{
		"published with its uuid":          {before: true},
		"created after the pool was built": {before: false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			e := newMIGEnv(t, "[]")
			if tc.before {
				_, _, err := migapi.Create(context.Background(), e.gpu0(), "2g.10gb", 2)
				require.NoError(t, err)
			}
			d := e.driver()
			if !tc.before {
				_, _, err := migapi.Create(context.Background(), e.gpu0(), "2g.10gb", 2)
				require.NoError(t, err)
			}
			ins := e.instances()
			require.Len(t, ins, 1)
			c := claim(uid(1), "mid", mig("mig", "gpu-0-mig-2g-10gb-2"))
			res := mustPrepare(t, d, c)
			require.Equal(t, "gpublocks.io/gpu="+ins[0].UUID(), res.Devices[0].CDIDeviceIDs[0])
			require.False(t, d.Prepared()[0].Created)
			require.NoError(t, unprepare(t, d, c))
			require.Equal(t, ins[0].UUID(), e.instances()[0].UUID(), "an instance gpublocks did not create is never destroyed")
		})
	}
}

func TestUnprepareMIGBusy(t *testing.T) {
	e := newMIGEnv(t, "[]")
	d := e.driver()
	c := claim(uid(1), "busy", mig("mig", "gpu-0-mig-1g-5gb-0"))
	mustPrepare(t, d, c)
	migUUID := d.Prepared()[0].UUID
	pid, err := e.b.StartProcess(0, migUUID)
	require.NoError(t, err)

	err = unprepare(t, d, c)
	require.ErrorIs(t, err, migapi.ErrBusy)
	require.ErrorIs(t, err, ErrMIG)
	require.ErrorContains(t, err, "gpu-0-mig-1g-5gb-0")
	require.Len(t, d.Prepared(), 1, "still prepared: its devices keep counting until the kubelet's retry succeeds")
	require.Len(t, e.instances(), 1)

	require.NoError(t, e.b.StopProcess(pid))
	require.NoError(t, unprepare(t, d, c))
	require.Empty(t, e.instances())
	require.Empty(t, d.Prepared())
}

func TestPrepareMIGConflicts(t *testing.T) {
	tests := map[string]struct {
		second   resourceapi.DeviceRequestAllocationResult
		wantText string
	}{
		"the same placement": {second: mig("mig", "gpu-0-mig-1g-5gb-0"), wantText: "gpu-0-mig-1g-5gb-0"},
		"an overlapping one": {second: mig("mig", "gpu-0-mig-3g-20gb-0"), wantText: "memory slices 0-3"},
		"the whole GPU":      {second: mig("mig", "gpu-0-mig-7g-40gb-0"), wantText: "overlap device gpu-0-mig-1g-5gb-0"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			e := newMIGEnv(t, "[]")
			// The pool stays as first published, as when the scheduler
			// allocated from it before the refresh.
			e.mgr.noRepublish = true
			d := e.driver()
			mustPrepare(t, d, claim(uid(1), "first", mig("mig", "gpu-0-mig-1g-5gb-0")))
			before := d.Prepared()
			err := prepare(t, d, claim(uid(2), "second", tc.second)).Err
			require.ErrorIs(t, err, ErrConflict)
			require.ErrorContains(t, err, tc.wantText)
			require.ErrorContains(t, err, "default/first")
			require.Equal(t, before, d.Prepared())
			require.Len(t, e.instances(), 1, "a refused claim creates nothing")
		})
	}
	t.Run("two claims of one call", func(t *testing.T) {
		e := newMIGEnv(t, "[]")
		d := e.driver()
		a := claim(uid(1), "a", mig("mig", "gpu-0-mig-2g-10gb-4"))
		b := claim(uid(2), "b", mig("mig", "gpu-0-mig-1g-5gb-5"))
		out, err := d.PrepareResourceClaims(context.Background(), []*resourceapi.ResourceClaim{a, b})
		require.NoError(t, err)
		require.NoError(t, out[a.UID].Err)
		require.ErrorIs(t, out[b.UID].Err, ErrConflict)
		require.Len(t, e.instances(), 1)
	})
}

// A create that fails leaves no instance, spec or checkpoint entry.
func TestPrepareMIGCreateFails(t *testing.T) {
	tests := map[string]struct {
		op      sim.MigOp
		nth     int
		results []resourceapi.DeviceRequestAllocationResult
		device  string
	}{
		"the GPU instance": {
			op: sim.OpCreateGpuInstance, nth: 1,
			results: []resourceapi.DeviceRequestAllocationResult{mig("mig", "gpu-0-mig-1g-5gb-6")}, device: "gpu-0-mig-1g-5gb-6",
		},
		"the compute instance": {
			op: sim.OpCreateComputeInstance, nth: 1,
			results: []resourceapi.DeviceRequestAllocationResult{mig("mig", "gpu-0-mig-1g-5gb-6")}, device: "gpu-0-mig-1g-5gb-6",
		},
		"the second device of a claim": {
			op: sim.OpCreateGpuInstance, nth: 2,
			results: []resourceapi.DeviceRequestAllocationResult{mig("a", "gpu-0-mig-3g-20gb-4"), mig("b", "gpu-0-mig-1g-5gb-0")}, device: "gpu-0-mig-1g-5gb-0",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			e := newMIGEnv(t, "[]")
			d := e.driver()
			require.NoError(t, e.b.FailMigOp(0, tc.op, tc.nth, nvml.ERROR_UNKNOWN))
			c := claim(uid(1), "x", tc.results...)
			err := prepare(t, d, c).Err
			require.ErrorIs(t, err, ErrMIG)
			require.ErrorContains(t, err, tc.device)
			require.ErrorContains(t, err, nvml.ERROR_UNKNOWN.Error())
			require.Empty(t, e.instances(), "nothing is left behind")
			require.Empty(t, d.Prepared())
			_, statErr := os.Stat(d.claimSpecs.Path(uid(1)))
			require.ErrorIs(t, statErr, os.ErrNotExist)
			claims, loadErr := loadCheckpoint(d.checkpoint)
			require.NoError(t, loadErr)
			require.Empty(t, claims)

			// The kubelet's retry succeeds.
			mustPrepare(t, d, c)
			require.Len(t, e.instances(), len(tc.results))
		})
	}
}

// A restarted driver knows what it created: start destroys nothing, and
// unprepare still destroys the instances it created, and only those.
func TestMIGRestart(t *testing.T) {
	e := newMIGEnv(t, "[]")
	d := e.driver()
	created := claim(uid(1), "created", mig("mig", "gpu-0-mig-1g-5gb-1"))
	mustPrepare(t, d, created)
	_, _, err := migapi.Create(context.Background(), e.gpu0(), "1g.5gb", 4)
	require.NoError(t, err)
	e.discover()
	require.NoError(t, d.Publish(context.Background(), e.pool(), e.inv))
	existing := claim(uid(2), "existing", mig("mig", "gpu-0-mig-1g-5gb-4"))
	mustPrepare(t, d, existing)
	before := d.Prepared()
	require.Len(t, e.instances(), 2)

	// A new driver over the same directories and GPUs.
	d2 := e.driver()
	require.Equal(t, before, d2.Prepared())
	require.Len(t, e.instances(), 2, "start destroys no live instance")
	require.Equal(t, mustPrepare(t, d, created), mustPrepare(t, d2, created), "the kubelet's repeated prepare gets the same answer")
	require.Len(t, e.instances(), 2)

	require.NoError(t, unprepare(t, d2, created))
	ins := e.instances()
	require.Len(t, ins, 1, "the restarted driver destroys what it created")
	require.Equal(t, 4, ins[0].Placement.Start)
	require.NoError(t, unprepare(t, d2, existing))
	require.Len(t, e.instances(), 1, "and never what it did not")
}

// Without a MIG manager, placements without an instance are refused, as
// before DRA created MIG instances.
func TestPrepareMIGWithoutManager(t *testing.T) {
	e := newMIGEnv(t, "[]")
	e.opts.MIG = nil
	d := e.driver()
	err := prepare(t, d, claim(uid(1), "x", mig("mig", "gpu-0-mig-1g-5gb-0"))).Err
	require.ErrorIs(t, err, ErrUnknownDevice)
	require.ErrorContains(t, err, "creates none")
	require.Empty(t, e.instances())
}

// crashingMIG creates the instance, then kills the driver (a panic stands
// for kill -9) before prepare can record what it made.
type crashingMIG struct{ *simMIG }

func (c crashingMIG) Create(ctx context.Context, gpuUUID, profile string, start int) (string, bool, error) {
	if _, _, err := c.simMIG.Create(ctx, gpuUUID, profile, start); err != nil {
		return "", false, err
	}
	panic("killed after creating the instance")
}

// A driver killed between creating an instance and recording the claim
// neither leaks the instance nor forgets it: the kubelet's retry on the
// restarted driver finishes the prepare, and unprepare destroys it.
func TestMIGCrashAfterCreate(t *testing.T) {
	e := newMIGEnv(t, "[]")
	e.opts.MIG = crashingMIG{e.mgr}
	d := e.driver()
	c := claim(uid(1), "cut-short", mig("mig", "gpu-0-mig-1g-5gb-5"))
	require.Panics(t, func() { _, _ = d.PrepareResourceClaims(context.Background(), []*resourceapi.ResourceClaim{c}) })
	require.Len(t, e.instances(), 1)

	e.opts.MIG = e.mgr
	d2 := e.driver()
	res := mustPrepare(t, d2, c)
	ins := e.instances()
	require.Len(t, ins, 1, "the retry finds the instance the killed driver made")
	require.Equal(t, "gpublocks.io/gpu="+ins[0].UUID(), res.Devices[0].CDIDeviceIDs[0])
	require.True(t, d2.Prepared()[0].Created)
	require.NoError(t, unprepare(t, d2, c))
	require.Empty(t, e.instances(), "and unprepare destroys it")
}

// A prepare cut short and retried by a driver that creates no MIG
// instances is refused, not a crash.
func TestMIGPendingWithoutManager(t *testing.T) {
	e := newMIGEnv(t, "[]")
	e.opts.MIG = crashingMIG{e.mgr}
	d := e.driver()
	c := claim(uid(1), "cut-short", mig("mig", "gpu-0-mig-1g-5gb-5"))
	require.Panics(t, func() { _, _ = d.PrepareResourceClaims(context.Background(), []*resourceapi.ResourceClaim{c}) })

	e.opts.MIG = nil
	d2 := e.driver()
	require.ErrorIs(t, prepare(t, d2, c).Err, ErrUnknownDevice)
	require.Empty(t, d2.Prepared())
	require.NoError(t, unprepare(t, d2, c))
}
