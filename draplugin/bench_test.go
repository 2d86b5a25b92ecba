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
