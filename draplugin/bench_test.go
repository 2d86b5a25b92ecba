package draplugin

import (
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/gpublocks/gpublocks/dra"
	"github.com/gpublocks/gpublocks/internal/atomicfile"
)

// BenchmarkPrepare measures what NodePrepareResources plus
// NodeUnprepareResources cost the driver for a 30-block claim on a node
// with six other claims: the checks, the claim's CDI spec written and
// removed, the checkpoint written twice, each write fsynced with its
// directory. It reports p50 and p99 per prepare+unprepare. The "floor"
// sub-benchmark does only the three atomic writes of that work (the same
// six fsyncs) in the same directory, so the ratio of the two is the
// driver's own cost over the filesystem's, whatever the disk.
func BenchmarkPrepare(b *testing.B) {
	b.Run("prepare+unprepare", func(b *testing.B) {
		e := newEnv(b)
		d := e.driver(b)
		for i := 2; i < 7; i++ {
			mustPrepare(b, d, claim(uid(1000+i), "other", whole("gpu", dra.GPUDeviceName(i))))
		}
		mustPrepare(b, d, claim(uid(1100), "neighbour", blocksOf("blocks", "gpu-7-blocks", 50, shareUID(1100))))
		b.ReportAllocs()
		n := 0
		report(b, func() {
			n++
			c := claim(uid(n), "bench", blocksOf("blocks", "gpu-7-blocks", 30, shareUID(n)))
			if res := prepare(b, d, c); res.Err != nil {
				b.Fatal(res.Err)
			}
			if err := unprepare(b, d, c); err != nil {
				b.Fatal(err)
			}
		})
	})
	b.Run("floor", func(b *testing.B) {
		dir := b.TempDir()
		spec, ckpt := make([]byte, 400), make([]byte, 2000)
		report(b, func() {
			for _, w := range []struct {
				name string
				data []byte
			}{{"spec.yaml", spec}, {"checkpoint.json", ckpt}, {"checkpoint.json", ckpt}} {
				if err := atomicfile.Write(filepath.Join(dir, w.name), w.data, 0o644); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}

// report runs op b.N times and reports its p50 and p99.
func report(b *testing.B, op func()) {
	var took []time.Duration
	for b.Loop() {
		start := time.Now()
		op()
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(took[len(took)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkPrepareMIG measures prepare+unprepare of a claim for one
// 1g.5gb MIG device on a simulated A100 40 GB, p50 and p99:
//
//   - "create": the placement has no instance, so prepare creates it
//     (GPU and compute instance), checkpoints, and refreshes (discovering
//     the GPUs again and republishing the pool, as serve's rescan does),
//     and unprepare destroys it and refreshes again;
//   - "existing": the instance exists and is published with its UUID, so
//     neither creates, destroys nor refreshes: the driver's cost for a
//     MIG device that the config's layout made, for the ratio.
//
// The simulator's NVML answers in memory, so "create" over "existing" is
// the cost of the MIG work itself on top of the filesystem's.
func BenchmarkPrepareMIG(b *testing.B) {
	b.Run("create", func(b *testing.B) {
		e := newMIGEnv(b, "[]")
		d := e.driver()
		b.ReportAllocs()
		n := 0
		report(b, func() {
			n++
			c := claim(uid(n), "bench", mig("mig", "gpu-0-mig-1g-5gb-2"))
			if res := prepare(b, d, c); res.Err != nil {
				b.Fatal(res.Err)
			}
			if err := unprepare(b, d, c); err != nil {
				b.Fatal(err)
			}
		})
		if len(e.instances()) != 0 {
			b.Fatal("an instance was left behind")
		}
	})
	b.Run("existing", func(b *testing.B) {
		e := newMIGEnv(b, "[1g.5gb]")
		d := e.driver()
		name := dra.MIGDeviceName(0, e.inv.GPUs[0].MigDevices[0])
		b.ReportAllocs()
		n := 0
		report(b, func() {
			n++
			c := claim(uid(n), "bench", mig("mig", name))
			if res := prepare(b, d, c); res.Err != nil {
				b.Fatal(res.Err)
			}
			if err := unprepare(b, d, c); err != nil {
				b.Fatal(err)
			}
		})
		if e.mgr.refreshes.Load() != 0 {
			b.Fatal("an existing instance needs no refresh")
		}
	})
}
