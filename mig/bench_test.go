package mig_test

import (
	"context"
	"slices"
	"testing"

	"github.com/gpublocks/gpublocks/mig"
)

// BenchmarkCreateDestroy is DRA's prepare and unprepare of one MIG claim on
// the simulator: read the GPU, create a 1g.10gb and its compute instance,
// then destroy them.
func BenchmarkCreateDestroy(b *testing.B) {
	sb := simulate(b, "gpus: [{model: A100-SXM4-80GB, mig: [3g.40gb, 2g.20gb]}]")
	dev := device(b, sb, 0)
	ctx := context.Background()
	for b.Loop() {
		in, _, err := mig.Create(ctx, dev, "1g.10gb", 1)
		if err != nil {
			b.Fatal(err)
		}
		if err := mig.Destroy(ctx, dev, in.GI); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkApplyDayNight flips a GPU between 7× 1g.10gb and 2× 3g.40gb.
func BenchmarkApplyDayNight(b *testing.B) {
	sb := simulate(b, "gpus: [{model: A100-SXM4-80GB, mig: []}]")
	dev := device(b, sb, 0)
	ctx := context.Background()
	day, night := mig.Layout(slices.Repeat([]string{"1g.10gb"}, 7)), mig.Layout{"3g.40gb", "3g.40gb"}
	for i := 0; b.Loop(); i++ {
		l := day
		if i%2 == 1 {
			l = night
		}
		if _, err := mig.Apply(ctx, dev, l); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSolve plans a full A100 layout beside a different one.
func BenchmarkSolve(b *testing.B) {
	cat := catalog(b, "A100-SXM4-80GB")
	existing := complete(packings(cat)[100])
	layout := mig.Layout{"3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"}
	for b.Loop() {
		if _, err := mig.Solve(cat, existing, layout); err != nil {
			b.Fatal(err)
		}
	}
}
