package verify

import (
	"context"
	"math"
	"testing"

	"github.com/matsurgery/matsurgery/kernels/cpu"
	"github.com/matsurgery/matsurgery/kernels/cuda"
)

// On a GPU: verify gives the same verdicts and nearly the same figures on the
// CUDA backend as on the CPU. Skips without a GPU; on a GPU machine:
//
//	CGO_ENABLED=0 go test -c -o bin/verify.test ./verify && (cd verify && ../bin/verify.test -test.run CUDA -test.v)
func TestCUDAAgreesWithCPU(t *testing.T) {
	if ok, why := cuda.Available(); !ok {
		t.Skip("no GPU (" + why + "); build with CGO_ENABLED=0 go test -c ./verify and run the binary on a GPU machine")
	}
	for fam, teacher := range fixtures {
		t.Run(fam, func(t *testing.T) {
			h := convert(t, teacher, 0.5, "")
			gpu, err := cuda.New(0)
			if err != nil {
				t.Fatal(err)
			}
			defer gpu.Close()
			o := Options{Hybrid: h, Teacher: teacher, SeqLen: 200, Batch: 2, Chunk: 32, Seed: 4}
			o.Backend = gpu
			rg, err := Run(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			o.Backend = cpu.New(0)
			rc, err := Run(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			if !rg.Pass || !rc.Pass {
				t.Fatalf("verdicts: gpu %v, cpu %v", rg.Pass, rc.Pass)
			}
			for i := range rg.Layers {
				g, c := rg.Layers[i], rc.Layers[i]
				if g.IdentitySeq.RelErr > 1e-5 || g.IdentityChunk.RelErr > 1e-5 || g.Scan.RelErr > 1e-5 {
					t.Errorf("layer %d on GPU: identity %.3g/%.3g scan %.3g", g.Layer, g.IdentitySeq.RelErr, g.IdentityChunk.RelErr, g.Scan.RelErr)
				}
				if math.Abs(*g.DistanceRelErr-*c.DistanceRelErr) > 1e-4*math.Abs(*c.DistanceRelErr) {
					t.Errorf("layer %d distance: gpu %.6g, cpu %.6g", g.Layer, *g.DistanceRelErr, *c.DistanceRelErr)
				}
			}
		})
	}
}
