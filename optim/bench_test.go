package optim

import (
	"math/rand/v2"
	"testing"
)

// benchParams is 100M parameters in 100 tensors of 1M, gradients filled.
func benchParams(b *testing.B) []Param {
	b.Helper()
	rng := rand.New(rand.NewPCG(31, 32))
	ps := make([]Param, 100)
	for k := range ps {
		ps[k] = Param{Name: string(rune('A'+k%26)) + string(rune('a'+k/26)), Data: make([]float32, 1<<20), Grad: make([]float32, 1<<20), Decay: k%4 != 0}
		for i := range ps[k].Data {
			ps[k].Data[i] = float32(rng.NormFloat64() * 0.02)
			ps[k].Grad[i] = float32(rng.NormFloat64() * 1e-3)
		}
	}
	return ps
}

// BenchmarkAdamWStep100M: one update of 100M parameters. Bytes counted: θ,
// g, m, v read and θ, m, v written, 28 per parameter.
func BenchmarkAdamWStep100M(b *testing.B) {
	ps := benchParams(b)
	opt := Recipe()
	if err := opt.Step(ps, 1e-4); err != nil { // allocate the moments outside the timing
		b.Fatal(err)
	}
	b.SetBytes(28 * 100 << 20)
	b.ResetTimer()
	for b.Loop() {
		if err := opt.Step(ps, 1e-4); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkClipGlobalNorm100M: norm and scaling of 100M gradients (read
// twice, written once: 12 bytes per parameter).
func BenchmarkClipGlobalNorm100M(b *testing.B) {
	ps := benchParams(b)
	b.SetBytes(12 * 100 << 20)
	b.ResetTimer()
	for b.Loop() {
		if _, err := ClipGlobalNorm(ps, 1e-3); err != nil {
			b.Fatal(err)
		}
	}
}
