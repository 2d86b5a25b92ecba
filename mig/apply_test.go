package mig_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/stretchr/testify/require"

	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/gpu/sim"
	"github.com/gpublocks/gpublocks/mig"
)

// migs lists GPU index's MIG devices as discovery sees them: profile →
// UUIDs.
func migs(t *testing.T, b *sim.Backend, index int) map[string][]string {
	t.Helper()
	inv, err := gpu.Discover(context.Background(), b)
	require.NoError(t, err)
	require.Empty(t, inv.Skipped)
	out := map[string][]string{}
	for _, m := range inv.GPUs[index].MigDevices {
		out[m.Profile] = append(out[m.Profile], m.UUID)
	}
	return out
}

func uuids(m map[string][]string) []string {
	var out []string
	for _, us := range m {
		out = append(out, us...)
	}
	slices.Sort(out)
	return out
}

func layoutOf(m map[string][]string) []string {
	var out []string
	for p, us := range m {
		for range us {
			out = append(out, p)
		}
	}
	return out
}

func apply(t *testing.T, dev nvml.Device, profiles ...string) *mig.Result {
	t.Helper()
	l, err := mig.ParseLayout(profiles)
	require.NoError(t, err)
	res, err := mig.Apply(context.Background(), dev, l)
	require.NoError(t, err)
	return res
}

// TestApplyDayAndNight flips an A100 80GB between seven small slices and
// two large ones, and checks each apply against discovery.
func TestApplyDayAndNight(t *testing.T) {
	b := simulate(t, "gpus: [{model: A100-SXM4-80GB, mig: []}, {model: A100-SXM4-80GB}]")
	dev := device(t, b, 0)
	day := slices.Repeat([]string{"1g.10gb"}, 7)
	night := []string{"3g.40gb", "3g.40gb"}

	res := apply(t, dev, day...)
	require.Len(t, res.Created, 7)
	require.Empty(t, res.Destroyed)
	got := migs(t, b, 0)
	require.ElementsMatch(t, day, layoutOf(got))
	for _, in := range res.Created {
		require.Contains(t, got["1g.10gb"], in.UUID(), "Result carries the MIG UUIDs")
	}

	pending, err := mig.PlanFor(dev, night)
	require.NoError(t, err)
	require.True(t, pending.Changes())
	require.Len(t, pending.Destroy, 7)
	require.ElementsMatch(t, day, layoutOf(migs(t, b, 0)), "planning changes nothing")

	res = apply(t, dev, night...)
	require.Len(t, res.Destroyed, 7)
	require.Len(t, res.Created, 2)
	require.ElementsMatch(t, night, layoutOf(migs(t, b, 0)))

	done, err := mig.PlanFor(dev, night)
	require.NoError(t, err)
	require.False(t, done.Changes(), done.String())
	require.Equal(t, "keep 3g.40gb (GPU instance 2, memory slices 4-7), 3g.40gb (GPU instance 1, memory slices 0-3)", done.String())

	res = apply(t, dev, day...)
	require.Len(t, res.Destroyed, 2)
	again := migs(t, b, 0)
	require.ElementsMatch(t, day, layoutOf(again))
	for _, u := range uuids(again) {
		require.NotContains(t, uuids(got), u, "a MIG device created anew has a new UUID")
	}

	require.Empty(t, migs(t, b, 1), "the other GPU is untouched")
}

// TestApplyIdempotent: applying the layout a GPU has changes nothing, and a
// new layout keeps the instances it can use, with their UUIDs.
func TestApplyIdempotent(t *testing.T) {
	b := simulate(t, "gpus: [{model: H100-SXM5-80GB, mig: [3g.40gb, 2g.20gb, 1g.10gb, 1g.10gb+me]}]")
	dev := device(t, b, 0)
	before := migs(t, b, 0)

	for range 3 {
		res := apply(t, dev, "1g.10gb+me", "1g.10gb", "2g.20gb", "3g.40gb")
		require.False(t, res.Plan.Changes(), res.Plan.String())
		require.Len(t, res.Kept, 4)
		require.Equal(t, before, migs(t, b, 0))
	}

	// Swap the 2g.20gb for two more 1g.10gb: the other three stay.
	res := apply(t, dev, "3g.40gb", "1g.10gb", "1g.10gb", "1g.10gb", "1g.10gb+me")
	require.Len(t, res.Kept, 3)
	require.Len(t, res.Destroyed, 1)
	require.Equal(t, "2g.20gb", res.Destroyed[0].Profile)
	require.Len(t, res.Created, 2)
	after := migs(t, b, 0)
	require.Equal(t, before["3g.40gb"], after["3g.40gb"])
	require.Equal(t, before["1g.10gb+me"], after["1g.10gb+me"])
	require.Contains(t, after["1g.10gb"], before["1g.10gb"][0])
	require.Len(t, after["1g.10gb"], 3)

	// And the empty layout clears the GPU, MIG mode staying on.
	res = apply(t, dev)
	require.Len(t, res.Destroyed, 5)
	require.Empty(t, migs(t, b, 0))
	require.NoError(t, mig.Check(dev, mig.Layout{}))
}

// TestApplyRepairsAfterFailure injects an NVML failure at each step of a
// layout change; Apply reports it, and the next Apply finishes the job.
func TestApplyRepairsAfterFailure(t *testing.T) {
	tests := map[string]struct {
		op  sim.MigOp
		nth int
		// want is in the error.
		want string
	}{
		"first GPU instance":     {op: sim.OpCreateGpuInstance, nth: 1, want: "creating GPU instance 3g.40gb at memory slices 4-7"},
		"second GPU instance":    {op: sim.OpCreateGpuInstance, nth: 2, want: "creating GPU instance 2g.20gb"},
		"first compute instance": {op: sim.OpCreateComputeInstance, nth: 1, want: "creating the compute instance of 3g.40gb"},
		"last compute instance":  {op: sim.OpCreateComputeInstance, nth: 2, want: "creating the compute instance of 2g.20gb"},
		"destroying a compute":   {op: sim.OpDestroyComputeInstance, nth: 3, want: "destroying compute instance 0 of 1g.10gb"},
		"destroying a GPU inst.": {op: sim.OpDestroyGpuInstance, nth: 2, want: "destroying GPU instance 1g.10gb"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			b := simulate(t, "gpus: [{model: A100-SXM4-80GB, mig: [1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb]}]")
			dev := device(t, b, 0)
			want := []string{"3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"}
			l, err := mig.ParseLayout(want)
			require.NoError(t, err)

			require.NoError(t, b.FailMigOp(0, tc.op, tc.nth, nvml.ERROR_UNKNOWN))
			res, err := mig.Apply(context.Background(), dev, l)
			require.ErrorIs(t, err, nvml.ERROR_UNKNOWN)
			require.ErrorContains(t, err, tc.want)
			require.NotNil(t, res, "the steps done are reported")
			require.NotEqual(t, want, layoutOf(migs(t, b, 0)))

			res, err = mig.Apply(context.Background(), dev, l)
			require.NoError(t, err)
			require.True(t, res.Plan.Changes())
			require.ElementsMatch(t, want, layoutOf(migs(t, b, 0)))

			res, err = mig.Apply(context.Background(), dev, l)
			require.NoError(t, err)
			require.False(t, res.Plan.Changes(), res.Plan.String())
		})
	}
}

// TestApplyRepairKeepsTheGPUInstance: a GPU instance left without its
// compute instance is given one, not destroyed and re-created.
func TestApplyRepairKeepsTheGPUInstance(t *testing.T) {
	b := simulate(t, "gpus: [{model: A100-SXM4-40GB, mig: []}]")
	dev := device(t, b, 0)
	l := mig.Layout{"3g.20gb"}
	require.NoError(t, b.FailMigOp(0, sim.OpCreateComputeInstance, 1, nvml.ERROR_UNKNOWN))
	_, err := mig.Apply(context.Background(), dev, l)
	require.ErrorIs(t, err, nvml.ERROR_UNKNOWN)

	st, err := mig.Read(dev)
	require.NoError(t, err)
	require.Len(t, st.Instances, 1)
	require.False(t, st.Instances[0].Complete())

	res, err := mig.Apply(context.Background(), dev, l)
	require.NoError(t, err)
	require.Len(t, res.Plan.Repair, 1)
	require.Empty(t, res.Destroyed)
	require.Len(t, res.Created, 1)
	require.Equal(t, st.Instances[0].GI, res.Created[0].GI)
	require.NotEmpty(t, res.Created[0].UUID())
}

// TestApplyRefusesBusy: an instance that runs a process is not destroyed;
// Apply changes nothing and says which instance and process.
func TestApplyRefusesBusy(t *testing.T) {
	b := simulate(t, "gpus: [{model: A100-SXM4-80GB, mig: [3g.40gb, 3g.40gb]}]")
	dev := device(t, b, 0)
	before := migs(t, b, 0)
	pid, err := b.StartProcess(0, before["3g.40gb"][1])
	require.NoError(t, err)

	ps, err := mig.Processes(dev)
	require.NoError(t, err)
	require.Len(t, ps, 1)

	l := mig.Layout(slices.Repeat([]string{"1g.10gb"}, 7))
	_, err = mig.Apply(context.Background(), dev, l)
	require.ErrorIs(t, err, mig.ErrBusy)
	require.ErrorContains(t, err, "runs process")
	require.Equal(t, before, migs(t, b, 0), "nothing changed")

	// Keeping the busy instance is fine.
	res := apply(t, dev, "3g.40gb", "1g.10gb", "1g.10gb", "1g.10gb")
	require.Len(t, res.Kept, 1)
	require.Equal(t, before["3g.40gb"][1], res.Kept[0].UUID())

	require.NoError(t, b.StopProcess(pid))
	apply(t, dev, l...)
	require.ElementsMatch(t, []string(l), layoutOf(migs(t, b, 0)))
}

// TestApplyKeepsTheBusyOne: of two instances the layout could keep, it
// keeps the one running a process, whichever that is.
func TestApplyKeepsTheBusyOne(t *testing.T) {
	for busy := range 2 {
		t.Run(fmt.Sprint(busy), func(t *testing.T) {
			b := simulate(t, "gpus: [{model: H100-SXM5-80GB, mig: [3g.40gb, 3g.40gb]}]")
			dev := device(t, b, 0)
			uuid := migs(t, b, 0)["3g.40gb"][busy]
			_, err := b.StartProcess(0, uuid)
			require.NoError(t, err)
			res := apply(t, dev, "3g.40gb", "1g.10gb", "1g.10gb", "1g.10gb")
			require.Len(t, res.Kept, 1)
			require.Equal(t, uuid, res.Kept[0].UUID())
			require.Len(t, res.Destroyed, 1)
		})
	}
}

// TestApplyDriverRefusesBusy: without process listing, the driver's own
// ERROR_IN_USE surfaces as ErrBusy.
func TestApplyDriverRefusesBusy(t *testing.T) {
	b := simulate(t, "gpus: [{model: A100-SXM4-80GB, mig: [7g.80gb]}]")
	dev := device(t, b, 0)
	_, err := b.StartProcess(0, uuids(migs(t, b, 0))[0])
	require.NoError(t, err)
	noProcs := &noProcesses{Device: dev}
	_, err = mig.Apply(context.Background(), noProcs, mig.Layout{"4g.40gb"})
	require.ErrorIs(t, err, mig.ErrBusy)
	require.ErrorIs(t, err, nvml.ERROR_IN_USE)
	require.ErrorContains(t, err, "destroying compute instance 0 of 7g.80gb")
}

// noProcesses is a GPU whose driver cannot list processes.
type noProcesses struct{ nvml.Device }

func (*noProcesses) GetComputeRunningProcesses() ([]nvml.ProcessInfo, nvml.Return) {
	return nil, nvml.ERROR_NOT_SUPPORTED
}

func TestApplyNeedsMigMode(t *testing.T) {
	b := simulate(t, "gpus: [{model: A100-SXM4-80GB}]")
	_, err := mig.Apply(context.Background(), device(t, b, 0), mig.Layout{"7g.80gb"})
	require.ErrorIs(t, err, mig.ErrDisabled)
	require.ErrorContains(t, err, "enable MIG mode first")
}

func TestApplyStopsOnCancel(t *testing.T) {
	b := simulate(t, "gpus: [{model: A100-SXM4-80GB, mig: []}]")
	dev := device(t, b, 0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := mig.Apply(ctx, dev, mig.Layout{"7g.80gb"})
	require.ErrorIs(t, err, context.Canceled)
	apply(t, dev, "7g.80gb")
	require.ElementsMatch(t, []string{"7g.80gb"}, layoutOf(migs(t, b, 0)))
}

// TestCreateDestroy is DRA's path: one instance at a chosen placement.
func TestCreateDestroy(t *testing.T) {
	b := simulate(t, "gpus: [{model: A100-SXM4-80GB, mig: []}]")
	dev := device(t, b, 0)
	ctx := context.Background()

	in, created, err := mig.Create(ctx, dev, "2g.20gb", 2)
	require.NoError(t, err)
	require.True(t, created)
	require.Equal(t, gpu.Placement{Start: 2, Size: 2}, in.Placement)
	require.Equal(t, migs(t, b, 0)["2g.20gb"], []string{in.UUID()})

	again, created, err := mig.Create(ctx, dev, "2g.20gb", 2)
	require.NoError(t, err)
	require.False(t, created, "the idle instance there is reused")
	require.Equal(t, in.UUID(), again.UUID())

	_, _, err = mig.Create(ctx, dev, "3g.40gb", 0)
	require.ErrorIs(t, err, nvml.ERROR_INSUFFICIENT_RESOURCES, "overlaps the 2g.20gb")
	_, _, err = mig.Create(ctx, dev, "2g.20gb", 1)
	require.ErrorIs(t, err, nvml.ERROR_INVALID_ARGUMENT)
	require.ErrorContains(t, err, "it may start at 0, 2, 4")

	require.NoError(t, b.FailMigOp(0, sim.OpCreateComputeInstance, 1, nvml.ERROR_UNKNOWN))
	_, _, err = mig.Create(ctx, dev, "1g.10gb", 6)
	require.ErrorIs(t, err, nvml.ERROR_UNKNOWN)
	st, err := mig.Read(dev)
	require.NoError(t, err)
	require.Len(t, st.Instances, 1, "the failed create left nothing behind")

	pid, err := b.StartProcess(0, in.UUID())
	require.NoError(t, err)
	require.ErrorIs(t, mig.Destroy(ctx, dev, in.GI), mig.ErrBusy)
	require.NoError(t, b.StopProcess(pid))
	require.NoError(t, mig.Destroy(ctx, dev, in.GI))
	require.Empty(t, migs(t, b, 0))
	require.ErrorIs(t, mig.Destroy(ctx, dev, in.GI), mig.ErrNotFound)
}
