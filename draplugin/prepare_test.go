package draplugin

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/utils/ptr"
	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/gpublocks/gpublocks/cdi"
	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/dra"
)

// specEnv reads a claim's spec with the CDI library, as a runtime does,
// and returns each device's environment by device name.
func specEnv(t *testing.T, d *Driver, claimUID types.UID) map[string][]string {
	t.Helper()
	path := d.claimSpecs.Path(string(claimUID))
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, cdi.SpecFileMode, fi.Mode().Perm())
	spec, err := cdiapi.ReadSpec(path, 0)
	require.NoError(t, err)
	require.Equal(t, "gpublocks.io/claim", spec.Kind)
	out := map[string][]string{}
	for _, dev := range spec.Devices {
		out[dev.Name] = dev.ContainerEdits.Env
	}
	return out
}

func TestPrepareWhole(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t)
	g := e.inv.GPUs[2]
	c := claim(uid(1), "train", whole("gpu", "gpu-2"))
	res := mustPrepare(t, d, c)
	require.Equal(t, []kubeletplugin.Device{{
		Requests: []string{"gpu"}, PoolName: testNode, DeviceName: "gpu-2",
		CDIDeviceIDs: []string{"gpublocks.io/gpu=" + g.UUID, "gpublocks.io/claim=" + uid(1) + "-gpu"},
	}}, res.Devices)
	require.Equal(t, map[string][]string{uid(1) + "-gpu": {"GPUBLOCKS_GPU_UUID=" + g.UUID}}, specEnv(t, d, c.UID))
	require.Equal(t, []PreparedDevice{{Claim: c.UID, Request: "gpu", Device: "gpu-2", Type: dra.TypeGPU, GPUUUID: g.UUID, UUID: g.UUID}}, d.Prepared())
	require.Equal(t, d.claimSpecs.Path(uid(1)), d.opts.CDIDir+"/gpublocks.io-claim_"+uid(1)+".yaml")
}

func TestPrepareBlocks(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t)
	g := e.inv.GPUs[3]
	c30 := claim(uid(1), "a", blocksOf("blocks", "gpu-3-blocks", 30, shareUID(1)))
	c50 := claim(uid(2), "b", blocksOf("blocks", "gpu-3-blocks", 50, shareUID(2)))
	c20 := claim(uid(3), "c", blocksOf("blocks", "gpu-3-blocks", 20, shareUID(3)))
	res := mustPrepare(t, d, c30)
	mustPrepare(t, d, c50)
	mustPrepare(t, d, c20)

	require.Equal(t, []kubeletplugin.Device{{
		Requests: []string{"blocks"}, PoolName: testNode, DeviceName: "gpu-3-blocks",
		CDIDeviceIDs: []string{"gpublocks.io/gpu=" + g.UUID, "gpublocks.io/claim=" + uid(1) + "-blocks"},
		ShareID:      ptr.To(types.UID(shareUID(1))),
	}}, res.Devices)
	require.Equal(t, map[string][]string{uid(1) + "-blocks": {
		"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30",
		"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=24576M", // 81920 MiB × 30 / 100
		"GPUBLOCKS_BLOCKS=30",
		"GPUBLOCKS_GPU_UUID=" + g.UUID,
		"GPUBLOCKS_SHARE_ID=" + shareUID(1),
	}}, specEnv(t, d, c30.UID))

	// The GPU is full: one more block is refused, and so is the GPU whole.
	one := claim(uid(4), "d", blocksOf("blocks", "gpu-3-blocks", 1, shareUID(4)))
	err := prepare(t, d, one).Err
	require.ErrorIs(t, err, ErrConflict)
	require.ErrorContains(t, err, "gpu-3-blocks")
	require.ErrorContains(t, err, "100 of 100 blocks")
	_, statErr := os.Stat(d.claimSpecs.Path(uid(4)))
	require.ErrorIs(t, statErr, os.ErrNotExist, "a refused claim gets no spec")
	require.ErrorIs(t, prepare(t, d, claim(uid(5), "e", whole("gpu", "gpu-3"))).Err, ErrConflict)

	// Unpreparing 20 makes room for the one.
	require.NoError(t, unprepare(t, d, c20))
	mustPrepare(t, d, one)
	var total int
	for _, p := range d.Prepared() {
		total += p.Blocks
	}
	require.Equal(t, 81, total)
}

func TestPrepareMIG(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t)
	name, md := e.migDevice(t, 1, 3)
	c := claim(uid(1), "inference", mig("mig", name))
	res := mustPrepare(t, d, c)
	require.Equal(t, []string{"gpublocks.io/gpu=" + md.UUID, "gpublocks.io/claim=" + uid(1) + "-mig"}, res.Devices[0].CDIDeviceIDs)
	require.Equal(t, map[string][]string{uid(1) + "-mig": {"GPUBLOCKS_GPU_UUID=" + md.ParentUUID}}, specEnv(t, d, c.UID))
	require.Equal(t, []PreparedDevice{{Claim: c.UID, Request: "mig", Device: name, Type: dra.TypeMIG, GPUUUID: md.ParentUUID, UUID: md.UUID}}, d.Prepared())

	// Another MIG device of the same GPU is fine; the same one is not.
	other, _ := e.migDevice(t, 1, 4)
	mustPrepare(t, d, claim(uid(2), "other", mig("mig", other)))
	err := prepare(t, d, claim(uid(3), "again", mig("mig", name))).Err
	require.ErrorIs(t, err, ErrConflict)
	require.ErrorContains(t, err, md.UUID)
	require.ErrorContains(t, err, "default/inference")
}

func TestPrepareRefused(t *testing.T) {
	// The simulation's UUIDs are deterministic: every env has these.
	g4 := newEnv(t).inv.GPUs[4]
	tests := map[string]struct {
		claim    *resourceapi.ResourceClaim
		wantErr  error
		wantText string
	}{
		"a device this node does not have": {
			claim: claim(uid(10), "x", whole("gpu", "gpu-42")), wantErr: ErrUnknownDevice, wantText: "gpu-42",
		},
		"a device of another node's pool": {
			claim: claim(uid(10), "x", func() resourceapi.DeviceRequestAllocationResult {
				r := whole("gpu", "gpu-2")
				r.Pool = "node-b"
				return r
			}()),
			wantErr: ErrUnknownDevice, wantText: "node-b/gpu-2",
		},
		"a MIG-enabled GPU whole": {
			claim: claim(uid(10), "x", whole("gpu", "gpu-0")), wantErr: ErrUnknownDevice, wantText: "gpu-0",
		},
		"an unhealthy GPU": {
			claim: claim(uid(10), "x", whole("gpu", "gpu-4")), wantErr: ErrUnhealthy, wantText: "xid-48",
		},
		"blocks of an unhealthy GPU": {
			claim: claim(uid(10), "x", blocksOf("b", "gpu-4-blocks", 10, shareUID(10))), wantErr: ErrUnhealthy, wantText: g4.UUID,
		},
		"whole where blocks are prepared": {
			claim: claim(uid(10), "x", whole("gpu", "gpu-5")), wantErr: ErrConflict, wantText: "default/blocks-holder",
		},
		"blocks where the GPU is prepared whole": {
			claim: claim(uid(10), "x", blocksOf("b", "gpu-6-blocks", 1, shareUID(10))), wantErr: ErrConflict, wantText: "prepared whole for claim default/whole-holder",
		},
		"the same whole GPU twice in one claim": {
			claim: claim(uid(10), "x", whole("a", "gpu-7"), whole("b", "gpu-7")), wantErr: ErrConflict, wantText: "gpu-7",
		},
		"blocks of one claim beyond 100": {
			claim:   claim(uid(10), "x", blocksOf("a", "gpu-7-blocks", 60, shareUID(10)), blocksOf("b", "gpu-7-blocks", 41, shareUID(11))),
			wantErr: ErrConflict, wantText: "41 more do not fit",
		},
		"blocks without consumedCapacity": {
			claim: claim(uid(10), "x", whole("b", "gpu-7-blocks")), wantErr: ErrInvalidAllocation, wantText: "DRAConsumableCapacity",
		},
		"zero blocks": {
			claim: claim(uid(10), "x", blocksOf("b", "gpu-7-blocks", 0, shareUID(10))), wantErr: ErrInvalidAllocation, wantText: "from 1 to 100",
		},
		"101 blocks": {
			claim: claim(uid(10), "x", blocksOf("b", "gpu-7-blocks", 101, shareUID(10))), wantErr: ErrInvalidAllocation, wantText: "is 101",
		},
		"half a block": {
			claim: claim(uid(10), "x", func() resourceapi.DeviceRequestAllocationResult {
				r := blocksOf("b", "gpu-7-blocks", 1, shareUID(10))
				r.ConsumedCapacity[dra.CapacityBlocks] = resource.MustParse("500m")
				return r
			}()),
			wantErr: ErrInvalidAllocation, wantText: "500m",
		},
		"not allocated": {
			claim: func() *resourceapi.ResourceClaim {
				c := claim(uid(10), "x")
				c.Status.Allocation = nil
				return c
			}(),
			wantErr: ErrInvalidAllocation, wantText: "not allocated",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			d := e.unpublished(t)
			require.NoError(t, d.Publish(context.Background(), e.pool(t, nil, map[string]string{g4.UUID: "xid-48"}), e.inv))
			mustPrepare(t, d, claim(uid(1), "blocks-holder", blocksOf("b", "gpu-5-blocks", 10, shareUID(1))))
			mustPrepare(t, d, claim(uid(2), "whole-holder", whole("gpu", "gpu-6")))
			before := d.Prepared()

			err := prepare(t, d, tc.claim).Err
			require.ErrorIs(t, err, tc.wantErr)
			require.ErrorContains(t, err, tc.wantText)
			require.ErrorContains(t, err, "so that the scheduler allocates it again", "every refusal says what to do")
			require.Equal(t, before, d.Prepared(), "a refused claim takes nothing")
		})
	}
}

// A claim refused in a call does not stop the others of the call.
func TestPrepareSeveralClaims(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t)
	good := claim(uid(1), "good", whole("gpu", "gpu-2"))
	bad := claim(uid(2), "bad", whole("gpu", "gpu-2"))
	foreign := claim(uid(3), "foreign", resourceapi.DeviceRequestAllocationResult{Request: "nic", Driver: "net.example.com", Pool: testNode, Device: "eth1"})
	out, err := d.PrepareResourceClaims(context.Background(), []*resourceapi.ResourceClaim{good, bad, foreign})
	require.NoError(t, err)
	require.NoError(t, out[good.UID].Err)
	require.ErrorIs(t, out[bad.UID].Err, ErrConflict)
	require.NoError(t, out[foreign.UID].Err)
	require.Empty(t, out[foreign.UID].Devices, "another driver's devices are not ours to prepare")
	require.Len(t, d.Prepared(), 1)
}

func TestPrepareIdempotent(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t)
	c := claim(uid(1), "a", blocksOf("blocks", "gpu-2-blocks", 40, shareUID(1)), whole("gpu", "gpu-3"))
	first := mustPrepare(t, d, c)

	old := time.Unix(1, 0)
	spec := d.claimSpecs.Path(uid(1))
	for _, p := range []string{spec, d.checkpoint} {
		require.NoError(t, os.Chtimes(p, old, old))
	}
	again := mustPrepare(t, d, c)
	require.Equal(t, first, again)
	for _, p := range []string{spec, d.checkpoint} {
		fi, err := os.Stat(p)
		require.NoError(t, err)
		require.Equal(t, old, fi.ModTime(), "%s is not written again", p)
	}
	require.Len(t, d.Prepared(), 2, "a repeated prepare takes nothing more")

	// A deleted spec is written again.
	require.NoError(t, os.Remove(spec))
	require.Equal(t, first, mustPrepare(t, d, c))
	require.Contains(t, specEnv(t, d, c.UID), uid(1)+"-blocks")

	// The same claim with another allocation must be unprepared first.
	moved := claim(uid(1), "a", blocksOf("blocks", "gpu-4-blocks", 40, shareUID(2)), whole("gpu", "gpu-3"))
	err := prepare(t, d, moved).Err
	require.ErrorIs(t, err, ErrInvalidAllocation)
	require.ErrorContains(t, err, "gpu-4-blocks")

	require.NoError(t, unprepare(t, d, c))
	require.NoError(t, unprepare(t, d, c), "unprepare is idempotent")
	_, statErr := os.Stat(spec)
	require.ErrorIs(t, statErr, os.ErrNotExist)
	require.Empty(t, d.Prepared())
}

func TestUnprepareUnknownClaim(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t)
	require.NoError(t, unprepare(t, d, claim(uid(99), "never")))
	_, err := os.Stat(d.checkpoint)
	require.ErrorIs(t, err, os.ErrNotExist, "nothing to record")
}

// One request with two devices (a subrequest among them) gets one claim
// device, on its first device, with both GPUs in index order.
func TestPrepareRequestOfSeveralDevices(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t)
	g5, g2 := e.inv.GPUs[5], e.inv.GPUs[2]
	c := claim(uid(1), "pair", whole("gpus/big", "gpu-5"), whole("gpus/big", "gpu-2"),
		blocksOf("small", "gpu-6-blocks", 25, shareUID(1)), blocksOf("small", "gpu-7-blocks", 50, shareUID(2)))
	res := mustPrepare(t, d, c)
	require.Len(t, res.Devices, 4)
	require.Equal(t, []string{"gpublocks.io/gpu=" + g5.UUID, "gpublocks.io/claim=" + uid(1) + "-gpus"}, res.Devices[0].CDIDeviceIDs)
	require.Equal(t, []string{"gpublocks.io/gpu=" + g2.UUID}, res.Devices[1].CDIDeviceIDs)
	require.Equal(t, []string{"gpus/big"}, res.Devices[1].Requests)
	env := specEnv(t, d, c.UID)
	require.Equal(t, []string{"GPUBLOCKS_GPU_UUID=" + g2.UUID + "," + g5.UUID}, env[uid(1)+"-gpus"])
	g6, g7 := e.inv.GPUs[6], e.inv.GPUs[7]
	require.Equal(t, []string{
		"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25",
		"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=20480M,1=40960M",
		"GPUBLOCKS_BLOCKS=75",
		"GPUBLOCKS_GPU_UUID=" + g6.UUID + "," + g7.UUID,
		"GPUBLOCKS_SHARE_ID=" + shareUID(1) + "," + shareUID(2),
	}, env[uid(1)+"-small"])
}

func TestCheckpointRecovery(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t)
	c1 := claim(uid(1), "a", blocksOf("blocks", "gpu-2-blocks", 60, shareUID(1)))
	c2 := claim(uid(2), "b", whole("gpu", "gpu-3"))
	name, _ := e.migDevice(t, 0, 0)
	c3 := claim(uid(3), "c", mig("mig", name))
	r1 := mustPrepare(t, d, c1)
	mustPrepare(t, d, c2)
	mustPrepare(t, d, c3)
	want := d.Prepared()

	// A new process over the same directories (kill -9 loses nothing:
	// everything reported prepared is in the checkpoint).
	d2 := e.unpublished(t)
	require.Equal(t, want, d2.Prepared())

	// Before its first Publish it accepts no new device at all …
	require.ErrorIs(t, prepare(t, d2, claim(uid(4), "d", whole("gpu", "gpu-4"))).Err, ErrUnknownDevice)
	// … but answers a prepared claim as before.
	require.Equal(t, r1, mustPrepare(t, d2, c1))

	require.NoError(t, d2.Publish(context.Background(), e.pool(t, nil, nil), e.inv))
	for name, c := range map[string]*resourceapi.ResourceClaim{
		"whole GPU again":         claim(uid(5), "e", whole("gpu", "gpu-3")),
		"blocks of a whole GPU":   claim(uid(5), "e", blocksOf("blocks", "gpu-3-blocks", 1, shareUID(5))),
		"blocks beyond 100":       claim(uid(5), "e", blocksOf("blocks", "gpu-2-blocks", 41, shareUID(5))),
		"a GPU with blocks whole": claim(uid(5), "e", whole("gpu", "gpu-2")),
		"the MIG device again":    claim(uid(5), "e", mig("mig", name)),
	} {
		require.ErrorIs(t, prepare(t, d2, c).Err, ErrConflict, name)
	}
	mustPrepare(t, d2, claim(uid(6), "f", blocksOf("blocks", "gpu-2-blocks", 40, shareUID(6))))

	// Claims prepared by the first process unprepare in the second.
	require.NoError(t, unprepare(t, d2, c1))
	_, err := os.Stat(d2.claimSpecs.Path(uid(1)))
	require.ErrorIs(t, err, os.ErrNotExist)
	require.Len(t, e.unpublished(t).Prepared(), 3, "c2, c3 and the new claim")
}

func TestCorruptCheckpoint(t *testing.T) {
	tests := map[string]func(t *testing.T, data []byte) []byte{
		"not JSON":   func(*testing.T, []byte) []byte { return []byte("{\"version\": 1, \"claims\": {") },
		"cut short":  func(_ *testing.T, data []byte) []byte { return data[:len(data)/2] },
		"empty file": func(*testing.T, []byte) []byte { return nil },
		"edited": func(t *testing.T, data []byte) []byte {
			out := strings.Replace(string(data), `"blocks":30`, `"blocks":3`, 1)
			require.NotEqual(t, string(data), out)
			return []byte(out)
		},
		"another version": func(t *testing.T, data []byte) []byte {
			out := strings.Replace(string(data), `"version":1`, `"version":2`, 1)
			require.NotEqual(t, string(data), out)
			return []byte(out)
		},
	}
	for name, corrupt := range tests {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			d := e.driver(t)
			mustPrepare(t, d, claim(uid(1), "a", blocksOf("blocks", "gpu-2-blocks", 30, shareUID(1))))
			data, err := os.ReadFile(d.checkpoint)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(d.checkpoint, corrupt(t, data), 0o600))

			_, err = newDriver(context.Background(), e.opts)
			require.ErrorIs(t, err, ErrCheckpoint)
			require.ErrorContains(t, err, d.checkpoint, "names the file")
			require.ErrorContains(t, err, "delete the file", "says what to do")
		})
	}
}

// A spec that a prepare wrote before it died, never reported, is removed
// at start; a prepared claim's spec stays.
func TestStartRemovesOrphanSpecs(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t)
	mustPrepare(t, d, claim(uid(1), "a", whole("gpu", "gpu-2")))
	_, err := d.claimSpecs.Write(context.Background(), uid(2), []cdi.ClaimDevice{{Request: "gpu", Env: map[string]string{"A": "1"}}})
	require.NoError(t, err)

	d2 := e.unpublished(t)
	uids, err := d2.claimSpecs.List()
	require.NoError(t, err)
	require.Equal(t, []string{uid(1)}, uids)
}

// A device that leaves the pool (a config change) stays prepared and keeps
// its GPU from being handed out again.
func TestPreparedDeviceOutsideThePool(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t)
	c := claim(uid(1), "a", blocksOf("blocks", "gpu-2-blocks", 30, shareUID(1)))
	res := mustPrepare(t, d, c)

	cfg, err := config.Parse([]byte("version: v1\ngpus:\n  - match: {index: [2]}\n    shape: whole\n"))
	require.NoError(t, err)
	require.NoError(t, d.Publish(context.Background(), e.pool(t, cfg, nil), e.inv))
	err = prepare(t, d, claim(uid(2), "b", whole("gpu", "gpu-2"))).Err
	require.ErrorIs(t, err, ErrConflict)
	require.ErrorContains(t, err, "30 blocks prepared")
	require.Equal(t, res, mustPrepare(t, d, c), "the prepared claim is answered as before")
	require.ErrorIs(t, prepare(t, d, claim(uid(3), "c", blocksOf("blocks", "gpu-2-blocks", 10, shareUID(3)))).Err, ErrUnknownDevice)
	require.NoError(t, unprepare(t, d, c))
	mustPrepare(t, d, claim(uid(2), "b", whole("gpu", "gpu-2")))
}

func TestPublishRejectsBadPools(t *testing.T) {
	e := newEnv(t)
	d := e.unpublished(t)
	p := e.pool(t, nil, nil)
	dup := dra.Pool{Counters: p.Counters, Devices: append(p.Devices[:len(p.Devices):len(p.Devices)], p.Devices[len(p.Devices)-1])}
	require.ErrorIs(t, d.Publish(context.Background(), dup, e.inv), ErrInvalidPool)
	require.ErrorIs(t, d.Publish(context.Background(), p, nil), ErrInvalidPool, "blocks need the GPUs' memory")
	require.ErrorIs(t, prepare(t, d, claim(uid(1), "a", whole("gpu", "gpu-2"))).Err, ErrUnknownDevice, "a rejected pool is not published")
}

func TestAdminAccessTakesNothing(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t)
	mustPrepare(t, d, claim(uid(1), "user", whole("gpu", "gpu-2")))
	admin := whole("gpu", "gpu-2")
	admin.AdminAccess = ptr.To(true)
	mustPrepare(t, d, claim(uid(2), "monitor", admin))
	require.NoError(t, unprepare(t, d, claim(uid(1), "user")))
	mustPrepare(t, d, claim(uid(3), "next", whole("gpu", "gpu-2")))
}

func TestOptionsRequired(t *testing.T) {
	e := newEnv(t)
	o := e.opts
	o.NodeName = ""
	_, err := newDriver(context.Background(), o)
	require.ErrorIs(t, err, ErrInvalidOptions)
	require.ErrorContains(t, err, "--node-name")
	o = e.opts
	o.KubeClient = nil
	_, err = newDriver(context.Background(), o)
	require.ErrorIs(t, err, ErrInvalidOptions)
}

// A checkpoint that cannot be written fails the claim, which then holds
// nothing and has no spec; an unprepare that cannot record itself leaves
// the claim prepared, to be retried.
func TestCheckpointWriteFails(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t)
	held := claim(uid(1), "held", whole("gpu", "gpu-2"))
	mustPrepare(t, d, held)

	// A directory in the checkpoint's place makes every write fail.
	require.NoError(t, os.Remove(d.checkpoint))
	require.NoError(t, os.Mkdir(d.checkpoint, 0o700))
	c := claim(uid(2), "new", blocksOf("blocks", "gpu-3-blocks", 30, shareUID(2)))
	err := prepare(t, d, c).Err
	require.ErrorIs(t, err, ErrCheckpoint)
	_, statErr := os.Stat(d.claimSpecs.Path(uid(2)))
	require.ErrorIs(t, statErr, os.ErrNotExist, "no spec for a claim that is not prepared")
	require.Len(t, d.Prepared(), 1)

	require.ErrorIs(t, unprepare(t, d, held), ErrCheckpoint)
	require.Len(t, d.Prepared(), 1, "still prepared: its devices keep counting")
	require.ErrorIs(t, prepare(t, d, claim(uid(3), "x", whole("gpu", "gpu-2"))).Err, ErrConflict)

	require.NoError(t, os.Remove(d.checkpoint))
	require.NoError(t, unprepare(t, d, held), "the kubelet's retry succeeds")
	require.Empty(t, d.Prepared())
	require.Empty(t, e.unpublished(t).Prepared())
}

// A node without devices still publishes its pool, as one empty slice.
func TestPublishEmptyPool(t *testing.T) {
	e := newEnv(t)
	d := e.unpublished(t)
	require.NoError(t, d.Publish(context.Background(), dra.Pool{}, e.inv))
	res := d.pending.Load()
	require.NotNil(t, res)
	require.Len(t, res.Pools[testNode].Slices, 1)
	require.Empty(t, res.Pools[testNode].Slices[0].Devices)

	require.NoError(t, d.Publish(context.Background(), e.pool(t, nil, nil), e.inv))
	require.Len(t, d.pending.Load().Pools[testNode].Slices, len(e.pool(t, nil, nil).Slices()), "the newest pool wins")
}
