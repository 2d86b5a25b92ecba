package mig_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/stretchr/testify/require"

	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/gpu/sim"
	"github.com/gpublocks/gpublocks/mig"
)

// simulate builds a simulated node from a simulation file's text.
func simulate(t testing.TB, spec string) *sim.Backend {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sim.yaml")
	require.NoError(t, os.WriteFile(path, []byte(spec), 0o644))
	b, err := sim.New(path)
	require.NoError(t, err)
	t.Cleanup(func() { b.Close() })
	return b
}

// device returns GPU index of b.
func device(t testing.TB, b *sim.Backend, index int) nvml.Device {
	t.Helper()
	d, ret := b.NVML().DeviceGetHandleByIndex(index)
	require.Equal(t, nvml.SUCCESS, ret)
	return d
}

// catalog reads the catalog of a simulated model.
func catalog(t testing.TB, model string) *mig.Catalog {
	t.Helper()
	b := simulate(t, fmt.Sprintf("gpus: [{model: %s, mig: []}]", model))
	cat, err := mig.ReadCatalog(device(t, b, 0))
	require.NoError(t, err)
	return cat
}

// item is one GPU instance at one placement: a brute-force building block.
type item struct {
	profile string
	at      gpu.Placement
}

func itemMask(p gpu.Placement) uint32 { return (1<<p.Size - 1) << p.Start }

// packings lists every set of GPU instances the GPU can hold at once, by
// brute force over all (profile, placement) pairs: no two overlap and no
// profile exceeds its instance count. The solver is checked against it.
func packings(cat *mig.Catalog) [][]item {
	var all []item
	limit := map[string]int{}
	for _, p := range cat.Profiles {
		limit[p.Name] = int(p.Info.InstanceCount)
		for _, pl := range p.Placements {
			all = append(all, item{p.Name, pl})
		}
	}
	var out [][]item
	var cur []item
	count := map[string]int{}
	var walk func(from int, used uint32)
	walk = func(from int, used uint32) {
		out = append(out, slices.Clone(cur))
		for i := from; i < len(all); i++ {
			it := all[i]
			if itemMask(it.at)&used != 0 || count[it.profile] >= limit[it.profile] {
				continue
			}
			cur = append(cur, it)
			count[it.profile]++
			walk(i+1, used|itemMask(it.at))
			count[it.profile]--
			cur = cur[:len(cur)-1]
		}
	}
	walk(0, 0)
	return out
}

// key is a layout's canonical form.
func key(profiles []string) string {
	s := slices.Clone(profiles)
	slices.Sort(s)
	return strings.Join(s, ",")
}

func profilesOf(items []item) []string {
	var out []string
	for _, it := range items {
		out = append(out, it.profile)
	}
	return out
}

// multisets lists every multiset of names with at most n entries.
func multisets(names []string, n int) [][]string {
	var out [][]string
	var cur []string
	var walk func(from int)
	walk = func(from int) {
		out = append(out, slices.Clone(cur))
		if len(cur) == n {
			return
		}
		for i := from; i < len(names); i++ {
			cur = append(cur, names[i])
			walk(i)
			cur = cur[:len(cur)-1]
		}
	}
	walk(0)
	return out
}

// checkPlan verifies a plan against the layout, the existing instances and
// the catalog: every layout entry is kept or created exactly once, nothing
// overlaps, creations sit at placements NVML reports, and whatever is not
// kept is destroyed.
func checkPlan(t *testing.T, cat *mig.Catalog, existing []mig.Instance, layout mig.Layout, plan *mig.Plan) {
	t.Helper()
	var got []string
	var used uint32
	add := func(profile string, at gpu.Placement) {
		m := itemMask(at)
		require.Zero(t, used&m, "%s at %v overlaps", profile, at)
		used |= m
		got = append(got, profile)
	}
	for _, in := range slices.Concat(plan.Keep, plan.Repair) {
		require.Contains(t, existing, in)
		add(in.Profile, in.Placement)
	}
	for _, in := range plan.Keep {
		require.True(t, in.Complete())
	}
	for _, c := range plan.Create {
		p, err := cat.Profile(c.Profile)
		require.NoError(t, err)
		require.Contains(t, p.Placements, c.Placement)
		add(c.Profile, c.Placement)
	}
	require.Equal(t, key(layout), key(got))
	require.Len(t, plan.Destroy, len(existing)-len(plan.Keep)-len(plan.Repair))
	for _, in := range plan.Destroy {
		require.Contains(t, existing, in)
		require.NotContains(t, plan.Keep, in)
		require.NotContains(t, plan.Repair, in)
	}
}

// complete turns items into existing, complete instances.
func complete(items []item) []mig.Instance {
	out := make([]mig.Instance, len(items))
	for i, it := range items {
		out[i] = mig.Instance{Profile: it.profile, GI: i, Placement: it.at, CIs: []mig.ComputeInstance{{Full: true}}}
	}
	return out
}

// TestSolveEveryLayout runs the solver over every layout of up to eight
// instances of A100 40GB, A100 80GB and H100 (the +me profiles included)
// on an empty GPU and beside existing instances, and checks its answer
// against a brute-force search: a layout fits exactly when some packing of
// the GPU holds it, and the plan keeps as many existing instances as the
// best such packing does.
func TestSolveEveryLayout(t *testing.T) {
	for _, model := range []string{"A100-SXM4-40GB", "A100-SXM4-80GB", "H100-SXM5-80GB"} {
		t.Run(model, func(t *testing.T) {
			cat := catalog(t, model)
			require.Contains(t, strings.Join(cat.Names(), " "), "+me")
			packs := packings(cat)
			byLayout := map[string][][]item{}
			for _, p := range packs {
				k := key(profilesOf(p))
				byLayout[k] = append(byLayout[k], p)
			}
			// Existing states: a spread of full and partial packings.
			var states [][]item
			for i := 0; i < len(packs); i += len(packs)/12 + 1 {
				states = append(states, packs[i])
			}
			states = append(states, nil, packs[len(packs)-1])

			layouts := multisets(cat.Names(), mig.MaxInstances)
			fits := 0
			for _, l := range layouts {
				layout := mig.Layout(l)
				plan, err := mig.Solve(cat, nil, layout)
				if _, ok := byLayout[key(l)]; !ok {
					require.ErrorIs(t, err, mig.ErrDoesNotFit, "%v", l)
					continue
				}
				fits++
				require.NoError(t, err, "%v", l)
				checkPlan(t, cat, nil, layout, plan)
				require.Len(t, plan.Create, len(l))

				for _, st := range states {
					existing := complete(st)
					plan, err := mig.Solve(cat, existing, layout)
					require.NoError(t, err)
					checkPlan(t, cat, existing, layout, plan)
					best := 0
					for _, p := range byLayout[key(l)] {
						n := 0
						for _, it := range p {
							if slices.Contains(st, it) {
								n++
							}
						}
						best = max(best, n)
					}
					require.Len(t, plan.Keep, best, "layout %v beside %v", l, st)
				}
			}
			require.Len(t, byLayout, fits, "every packable layout was enumerated")
			t.Logf("%s: %d layouts, %d fit, %d packings, %d existing states", model, len(layouts), fits, len(packs), len(states))
		})
	}
}

func TestSolveExplains(t *testing.T) {
	tests := map[string]struct {
		model  string
		layout []string
		want   []string
		is     error
	}{
		"third 3g": {
			model: "A100-SXM4-80GB", layout: []string{"3g.40gb", "3g.40gb", "3g.40gb"},
			want: []string{"3× 3g.40gb asked, the GPU allows at most 2"}, is: mig.ErrDoesNotFit,
		},
		"a 1g beside two 3g": {
			model: "A100-SXM4-80GB", layout: []string{"1g.10gb", "3g.40gb", "3g.40gb"},
			want: []string{"1g.10gb does not fit beside 3g.40gb, 3g.40gb", "3g.40gb at memory slices 4-7", "starting at 0, 1, 2, 3, 4, 5, 6"},
			is:   mig.ErrDoesNotFit,
		},
		"too many compute slices": {
			model: "H100-SXM5-80GB", layout: []string{"4g.40gb", "2g.20gb", "2g.20gb"},
			want: []string{"needs 8 compute slices, the GPU has 7"}, is: mig.ErrDoesNotFit,
		},
		"1g.20gb leaves no room": {
			model: "H100-SXM5-80GB", layout: []string{"1g.20gb", "1g.20gb", "1g.20gb", "1g.20gb", "1g.10gb"},
			want: []string{"1g.10gb does not fit beside 1g.20gb, 1g.20gb, 1g.20gb, 1g.20gb"}, is: mig.ErrDoesNotFit,
		},
		"two media extensions": {
			model: "H100-SXM5-80GB", layout: []string{"1g.10gb+me", "1g.10gb+me"},
			want: []string{"2× 1g.10gb+me asked, the GPU allows at most 1"}, is: mig.ErrDoesNotFit,
		},
		"profile of another model": {
			model: "A100-SXM4-40GB", layout: []string{"1g.10gb", "1g.20gb"},
			want: []string{`"1g.20gb"`, "A100-SXM4-40GB offers 7g.40gb, 4g.20gb, 3g.20gb, 2g.10gb, 1g.10gb, 1g.5gb, 1g.5gb+me"},
			is:   mig.ErrUnknownProfile,
		},
		"compute instance profile": {
			model: "A100-SXM4-80GB", layout: []string{"1c.3g.40gb"},
			want: []string{"such as 3g.40gb"}, is: mig.ErrInvalidProfile,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := mig.Solve(catalog(t, tc.model), nil, tc.layout)
			require.ErrorIs(t, err, tc.is)
			for _, w := range tc.want {
				require.ErrorContains(t, err, w)
			}
		})
	}
}

// TestSolveKeepsCompleteOverRepair: a complete instance is worth keeping
// over any number of bare GPU instances, since it keeps a MIG device.
func TestSolveKeepsCompleteOverRepair(t *testing.T) {
	cat := catalog(t, "A100-SXM4-80GB")
	existing := []mig.Instance{
		{Profile: "2g.20gb", GI: 3, Placement: gpu.Placement{Start: 0, Size: 2}}, // no compute instance
		{Profile: "2g.20gb", GI: 4, Placement: gpu.Placement{Start: 2, Size: 2}, CIs: []mig.ComputeInstance{{ID: 0, Full: true, UUID: "MIG-a"}}},
	}
	plan, err := mig.Solve(cat, existing, mig.Layout{"2g.20gb"})
	require.NoError(t, err)
	require.Equal(t, []mig.Instance{existing[1]}, plan.Keep)
	require.Equal(t, []mig.Instance{existing[0]}, plan.Destroy)
	require.Empty(t, plan.Create)

	plan, err = mig.Solve(cat, existing, mig.Layout{"2g.20gb", "2g.20gb"})
	require.NoError(t, err)
	require.Equal(t, []mig.Instance{existing[1]}, plan.Keep)
	require.Equal(t, []mig.Instance{existing[0]}, plan.Repair)
	require.True(t, plan.Changes())
	require.Contains(t, plan.String(), "repair 2g.20gb (GPU instance 3, memory slices 0-1)")
}

// TestCatalogOrder: profiles are listed largest first, with the names
// go-nvlib gives them.
func TestCatalogOrder(t *testing.T) {
	cat := catalog(t, "H100-SXM5-80GB")
	require.Equal(t, []string{"7g.80gb", "4g.40gb", "3g.40gb", "2g.20gb", "1g.20gb", "1g.10gb", "1g.10gb+me"}, cat.Names())
	require.Equal(t, 8, cat.Slices)
	require.Equal(t, 7, cat.ComputeSlices)
	p, err := cat.Profile("1g.10gb+me")
	require.NoError(t, err)
	require.Equal(t, uint32(1), p.Info.InstanceCount)
}
