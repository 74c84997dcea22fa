package model

import (
	"path/filepath"
	"testing"

	"github.com/matsurgery/matsurgery/kernels/cuda"
)

// On a GPU: the teacher and hybrid fixtures give the golden logits on the
// CUDA backend too (in bf16 precision within bf16Tol), and incremental
// decode there equals recomputing.
// Skips without a GPU; on a GPU machine:
//
//	CGO_ENABLED=0 go test -c -o bin/model.test ./model && (cd model && ../bin/model.test -test.run CUDA -test.v)
func TestCUDAMatchesGolden(t *testing.T) {
	if ok, why := cuda.Available(); !ok {
		t.Skip("no GPU (" + why + "); build with CGO_ENABLED=0 go test -c ./model and run the binary on a GPU machine")
	}
	cases := []struct{ golden, dir string }{
		{"phi", "phi-tiny"}, {"qwen2", "qwen2-tiny"}, {"llama", "llama-tiny"},
		{"phi-h25", "phi-tiny-h25"}, {"qwen2-h25", "qwen2-tiny-h25"},
	}
	for _, c := range cases {
		for _, prec := range []Precision{PrecisionF32, PrecisionBF16} {
			t.Run(c.golden+"/"+string(prec), func(t *testing.T) {
				be, err := cuda.New(0)
				if err != nil {
					t.Fatal(err)
				}
				defer be.Close()
				m, err := Load(filepath.Join(fixtures, c.dir), be, Options{Precision: prec})
				if err != nil {
					t.Fatal(err)
				}
				defer m.Close()
				if prec == PrecisionBF16 && m.Hybrid != nil && !m.mm.scanBF16 {
					t.Error("bf16: the CUDA scans were found not to take bf16 inputs")
				}
				g := openGolden(t, c.golden)
				pixels, ids := g.f32("pixel_values"), g.ids("input_ids")
				logits, err := m.Forward(pixels, ids)
				if err != nil {
					t.Fatal(err)
				}
				full := download(t, be, logits)
				tol := goldenTol
				if prec == PrecisionBF16 {
					tol = bf16Tol
				}
				checkRel(t, "logits", full, g.f64("logits"), tol)
				// Decode the prompt's last tokens one at a time: the same logits as the full forward.
				vocab := m.sizes.vocab
				n := len(ids)
				last, err := m.Prefill(pixels, ids[:n-3])
				if err != nil {
					t.Fatal(err)
				}
				L := m.SequenceLength(ids)
				rows := [][]float32{last}
				for _, id := range ids[n-3:] {
					v, err := m.Step(id)
					if err != nil {
						t.Fatal(err)
					}
					rows = append(rows, v)
				}
				// f32: decode is the forward's arithmetic. bf16: the prefill's
				// flash attention rounds its probabilities to bf16 as product
				// operands (flash-attention's precision), decode keeps them f32.
				stepTol := 1e-5
				if prec == PrecisionBF16 {
					stepTol = 2e-3
				}
				for k, v := range rows {
					pos := L - 4 + k
					want := make([]float64, vocab)
					for i := range want {
						want[i] = float64(full[pos*vocab+i])
					}
					checkRel(t, "decode vs forward", v, want, stepTol)
				}
			})
		}
	}
}
