package verify

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/layout"
)

// BenchmarkIntegrityValues times the integrity stage's value checks alone
// (every tensor of the hybrid read, finite, and the untouched ones
// compared with the teacher's), the part of verify that is host work on
// every device: $MATSURGERY_BENCH_HYBRID and $MATSURGERY_BENCH_TEACHER
// name the checkpoints (default: the tiny phi fixtures). On a full-size
// pair it is the floor under a GPU verify's wall time.
func BenchmarkIntegrityValues(b *testing.B) {
	hyDir, teDir := os.Getenv("MATSURGERY_BENCH_HYBRID"), os.Getenv("MATSURGERY_BENCH_TEACHER")
	if hyDir == "" || teDir == "" {
		hyDir, teDir = filepath.Join("..", "testdata", "fixtures", "phi-tiny-h25"), filepath.Join("..", "testdata", "fixtures", "phi-tiny")
	}
	cfg, err := formats.ReadModelConfig(hyDir)
	if err != nil {
		b.Fatal(err)
	}
	mc, ok, err := formats.ReadMambaConfig(hyDir)
	if err != nil || !ok {
		b.Fatalf("%s: no mamba config (%v)", hyDir, err)
	}
	desc, err := layout.For(cfg.Family)
	if err != nil {
		b.Fatal(err)
	}
	hy, err := formats.Open(hyDir)
	if err != nil {
		b.Fatal(err)
	}
	defer hy.Close()
	te, err := formats.Open(teDir)
	if err != nil {
		b.Fatal(err)
	}
	defer te.Close()
	var read int64
	for b.Loop() {
		in := newIntegrity(hy, te, cfg, mc, desc)
		in.checkConfig()
		in.checkStructure()
		if err := in.checkValues(context.Background()); err != nil {
			b.Fatal(err)
		}
		if len(in.global) > 0 {
			b.Fatalf("integrity problems: %v", in.global)
		}
		read = in.bytes + in.compared
	}
	b.SetBytes(read)
	b.ReportMetric(float64(read)/1e9, "GB-read")
}
