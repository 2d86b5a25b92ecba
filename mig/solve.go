package mig

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/gpublocks/gpublocks/gpu"
)

// Placed is a GPU instance a plan creates.
type Placed struct {
	Profile   string
	Placement gpu.Placement

	profile *Profile
}

// String writes "1g.10gb at memory slice 6".
func (p Placed) String() string { return p.Profile + " at " + slicesText(p.Placement) }

// Plan is how to turn a GPU's instances into a layout. Applying it destroys
// first (freeing slices), then repairs, then creates.
type Plan struct {
	Model  string
	Layout Layout
	// Keep are complete instances the layout uses as they are: their MIG
	// devices and UUIDs stay.
	Keep []Instance
	// Repair are GPU instances the layout uses whose compute instances are
	// not one that spans them (none, after a half-done apply; or smaller
	// ones someone made): those are replaced by one that does.
	Repair []Instance
	// Destroy are the instances the layout has no use for.
	Destroy []Instance
	// Create are the new instances, with their placements.
	Create []Placed
}

// Changes says whether applying the plan changes anything.
func (p *Plan) Changes() bool { return len(p.Repair)+len(p.Destroy)+len(p.Create) > 0 }

// String summarises the plan for logs.
func (p *Plan) String() string {
	var parts []string
	list := func(verb string, n int, item func(int) string) {
		if n == 0 {
			return
		}
		s := make([]string, n)
		for i := range n {
			s[i] = item(i)
		}
		parts = append(parts, verb+" "+strings.Join(s, ", "))
	}
	list("keep", len(p.Keep), func(i int) string { return p.Keep[i].String() })
	list("repair", len(p.Repair), func(i int) string { return p.Repair[i].String() })
	list("destroy", len(p.Destroy), func(i int) string { return p.Destroy[i].String() })
	list("create", len(p.Create), func(i int) string { return p.Create[i].String() })
	if len(parts) == 0 {
		return "no instances"
	}
	return strings.Join(parts, "; ")
}

// Scores of keeping an existing instance. A complete one keeps a MIG device
// (and the UUID pods and the kubelet know it by), so it outweighs any number
// of GPU instances kept only to be repaired; one running a process cannot
// go at all, so it outweighs any number of idle ones.
const (
	scoreRepair   = 1
	scoreComplete = (MaxInstances + 1) * scoreRepair
	scoreBusy     = (MaxInstances + 1) * scoreComplete
)

// Solve plans layout on a GPU with catalog cat and instances existing (as
// Read lists them; an instance matches a profile by name): it keeps as many
// existing instances as the layout can use (same profile; each stays where
// it is), first those running processes, then complete ones, and places the
// rest
// where nothing overlaps (memory slices) and within each profile's instance
// count. Among equally good plans it places new instances at the highest
// free start, as the driver does, which keeps low slices for large
// profiles. It needs no NVML calls.
//
// A layout the GPU cannot hold fails with an error wrapping ErrDoesNotFit
// that names the profile that does not fit and why; a profile the GPU does
// not offer, with one wrapping ErrUnknownProfile.
func Solve(cat *Catalog, existing []Instance, layout Layout) (*Plan, error) {
	want := make([]*Profile, len(layout))
	for i, name := range layout {
		p, err := cat.Profile(name)
		if err != nil {
			return nil, err
		}
		want[i] = p
	}
	// Largest first: they have the fewest placements, and a failure then
	// names the small profile that is left over, as a person would.
	slices.SortStableFunc(want, func(a, b *Profile) int {
		return cmp.Or(cmp.Compare(b.size(), a.size()), cmp.Compare(b.Info.SliceCount, a.Info.SliceCount), cmp.Compare(a.Name, b.Name))
	})
	if err := checkCounts(cat, want, layout); err != nil {
		return nil, err
	}

	s := newSearch(want, existing)
	if !s.run() {
		return nil, explain(cat, want, layout)
	}
	plan := &Plan{Model: cat.Model, Layout: layout}
	used := make([]bool, len(existing))
	for k, i := range s.best {
		o := s.opts[k][i]
		if o.existing < 0 {
			plan.Create = append(plan.Create, Placed{Profile: want[k].Name, Placement: o.placement, profile: want[k]})
			continue
		}
		used[o.existing] = true
		if existing[o.existing].Complete() {
			plan.Keep = append(plan.Keep, existing[o.existing])
		} else {
			plan.Repair = append(plan.Repair, existing[o.existing])
		}
	}
	for i, in := range existing {
		if !used[i] {
			plan.Destroy = append(plan.Destroy, in)
		}
	}
	return plan, nil
}

// checkCounts refuses layouts over a profile's instance count or the GPU's
// compute slices: no placement search is needed to know, and the message is
// plainer.
func checkCounts(cat *Catalog, want []*Profile, layout Layout) error {
	counts := map[*Profile]int{}
	compute := 0
	for _, p := range want {
		counts[p]++
		compute += int(p.Info.SliceCount)
	}
	for _, p := range want {
		if n := counts[p]; n > int(p.Info.InstanceCount) {
			return fmt.Errorf("%w: %s on %s: %d× %s asked, the GPU allows at most %d",
				ErrDoesNotFit, layout, cat.Model, n, p.Name, p.Info.InstanceCount)
		}
	}
	if compute > cat.ComputeSlices {
		return fmt.Errorf("%w: %s on %s: it needs %d compute slices, the GPU has %d",
			ErrDoesNotFit, layout, cat.Model, compute, cat.ComputeSlices)
	}
	return nil
}

// option is one place an entry of the layout can go.
type option struct {
	placement gpu.Placement
	mask      uint32
	existing  int // index of the existing instance kept there, or -1
	score     int
}

// search is a branch-and-bound search over the entries' placements.
type search struct {
	want []*Profile
	opts [][]option // per entry, highest start first
	rest []int      // rest[k]: the best score entries k.. can still add
	cur  []int
	best []int
	// bestScore is -1 until a full placement is found.
	bestScore int
}

func newSearch(want []*Profile, existing []Instance) *search {
	s := &search{want: want, opts: make([][]option, len(want)), rest: make([]int, len(want)+1),
		cur: make([]int, len(want)), bestScore: -1}
	for k, p := range want {
		for i := len(p.Placements) - 1; i >= 0; i-- {
			pl := p.Placements[i]
			o := option{placement: pl, mask: mask(pl), existing: -1}
			for j := range existing {
				in := &existing[j]
				if in.Profile == p.Name && in.Placement == pl {
					o.existing, o.score = j, scoreRepair
					switch {
					case in.Complete() && len(in.Processes) > 0:
						o.score = scoreBusy
					case in.Complete():
						o.score = scoreComplete
					}
				}
			}
			s.opts[k] = append(s.opts[k], o)
		}
	}
	for k := len(want) - 1; k >= 0; k-- {
		top := 0
		for _, o := range s.opts[k] {
			top = max(top, o.score)
		}
		s.rest[k] = s.rest[k+1] + top
	}
	return s
}

// run searches; it reports whether any full placement exists.
func (s *search) run() bool {
	s.step(0, 0, 0)
	return s.bestScore >= 0
}

func (s *search) step(k int, used uint32, score int) {
	if s.bestScore >= 0 && score+s.rest[k] <= s.bestScore {
		return // cannot beat what was found
	}
	if k == len(s.want) {
		s.best, s.bestScore = slices.Clone(s.cur), score
		return
	}
	// Equal profiles are interchangeable: take their options in order
	// only, so no arrangement is tried twice.
	first := 0
	if k > 0 && s.want[k] == s.want[k-1] {
		first = s.cur[k-1] + 1
	}
	for i := first; i < len(s.opts[k]); i++ {
		o := s.opts[k][i]
		if o.mask&used != 0 {
			continue
		}
		s.cur[k] = i
		s.step(k+1, used|o.mask, score+o.score)
	}
}

func mask(p gpu.Placement) uint32 { return (1<<p.Size - 1) << p.Start }

// explain says which profile does not fit: the first (largest first) whose
// addition makes the layout unplaceable, beside what fits before it.
func explain(cat *Catalog, want []*Profile, layout Layout) error {
	for n := 1; n <= len(want); n++ {
		s := newSearch(want[:n], nil)
		if s.run() {
			continue
		}
		p := want[n-1]
		if n == 1 {
			return fmt.Errorf("%w: %s on %s: NVML reports no placement for %s", ErrDoesNotFit, layout, cat.Model, p.Name)
		}
		before := newSearch(want[:n-1], nil)
		before.run()
		var names, example []string
		for k, i := range before.best {
			names = append(names, want[k].Name)
			example = append(example, want[k].Name+" at "+slicesText(before.opts[k][i].placement))
		}
		return fmt.Errorf("%w: %s on %s: %s does not fit beside %s: however those are placed (e.g. %s), no placement of %s is free (it takes %d memory slices starting at %s)",
			ErrDoesNotFit, layout, cat.Model, p.Name, strings.Join(names, ", "), strings.Join(example, ", "),
			p.Name, p.size(), startsText(p.Placements))
	}
	// Unreachable: Solve calls explain only when the whole layout failed.
	return fmt.Errorf("%w: %s on %s", ErrDoesNotFit, layout, cat.Model)
}
