package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/conformance"
)

func TestMambaGradConformance(t *testing.T) {
	conformance.RunMambaGrad(t, func() kernels.Backend { return New(0) }, conformance.DefaultTolerances())
}

// The family on one worker (no goroutines) and on an odd number of them.
func TestMambaGradConformanceWorkers(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	for _, w := range []int{1, 3} {
		t.Run(fmt.Sprintf("workers=%d", w), func(t *testing.T) {
			conformance.RunMambaGrad(t, func() kernels.Backend { return New(w) }, conformance.DefaultTolerances())
		})
	}
}

// The scan's backward on the portable matrix products too (the plain-Go
// micro-kernel and gonum's sgemm), as TestConformancePortable does for
// the forward operations.
func TestMambaGradConformancePortable(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	savedGemm, savedKernel := gemm, microKernel
	t.Cleanup(func() { gemm, microKernel = savedGemm, savedKernel })
	for name, k := range testMicroKernels {
		if name == microKernelName { // the active kernel: TestMambaGradConformance runs it
			continue
		}
		t.Run("blocked-"+name, func(t *testing.T) {
			gemm, microKernel = gemmBlocked, k
			conformance.RunMambaGrad(t, func() kernels.Backend { return New(0) }, conformance.DefaultTolerances())
		})
	}
	t.Run("gonum", func(t *testing.T) {
		gemm = gemmGonum
		conformance.RunMambaGrad(t, func() kernels.Backend { return New(0) }, conformance.DefaultTolerances())
	})
}

// mambaGradRun is one call of every MambaGrad operation on fixed random
// inputs, returning every output downloaded (accumulated ones pre-filled
// with ones).
func mambaGradRun(t *testing.T, be *Backend, chunk int) [][]float32 {
	t.Helper()
	rng := rand.New(rand.NewPCG(21, 22))
	up := func(lo, hi float64, shape ...int) kernels.Tensor {
		host := make([]float32, product(shape))
		for i := range host {
			host[i] = float32(lo + (hi-lo)*rng.Float64())
		}
		x, err := be.Upload(host, kernels.F32, shape...)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	ones := func(shape ...int) kernels.Tensor { return up(1, 1, shape...) }
	var outs []kernels.Tensor
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// Conv over 600 channels (three channel blocks), 2×40 tokens.
	du, dw, db := ones(2, 40, 600), ones(600, 4), ones(600)
	must(be.CausalConv1dBackward(du, dw, db, up(-1, 1, 2, 40, 600), up(-2, 2, 2, 40, 600), up(-0.5, 0.5, 600, 4), up(-0.5, 0.5, 600), true))
	outs = append(outs, du, dw, db)
	// Dt over 2×7000 rows (three row blocks).
	dr, dbias := ones(2, 7000, 6), ones(6)
	must(be.DtSoftplusBackward(dr, dbias, up(-1, 1, 2, 7000, 6), up(-10, 10, 2, 7000, 6), up(-3, 1, 6)))
	outs = append(outs, dr, dbias)
	// Gated norm over 900 rows of 96 channels (three row blocks), groups of 24.
	dy, dz, dnw := ones(900, 96), ones(900, 96), ones(96)
	must(be.GatedRMSNormBackward(dy, dz, dnw, up(-1, 1, 900, 96), up(-3, 3, 900, 96), up(-4, 4, 900, 96), up(0.5, 1.5, 96), 24, 1e-5))
	outs = append(outs, dy, dz, dnw)
	// Scan: 3 batches × 6 heads in 2 groups, 50 tokens.
	dx, ddt, dA, dB, dC, dD := ones(3, 50, 6, 5), ones(3, 50, 6), ones(6), ones(3, 50, 2, 7), ones(3, 50, 2, 7), ones(6)
	must(be.SSDChunkScanBackward(dx, ddt, dA, dB, dC, dD, up(-1, 1, 3, 50, 6, 5),
		up(-1, 1, 3, 50, 6, 5), up(0.001, 0.5, 3, 50, 6), up(-4, -0.1, 6), up(-1, 1, 3, 50, 2, 7), up(-1, 1, 3, 50, 2, 7), up(0.5, 1.5, 6), chunk))
	outs = append(outs, dx, ddt, dA, dB, dC, dD)
	res := make([][]float32, len(outs))
	for i, o := range outs {
		h, err := be.Download(o)
		if err != nil {
			t.Fatal(err)
		}
		res[i] = h
	}
	return res
}

// Results are bit-identical for any number of workers (for the scan, at
// each chunk length: chunks of one token, of 7 with a remainder, of 16,
// and of the whole sequence).
func TestMambaGradDeterministic(t *testing.T) {
	for _, chunk := range []int{1, 7, 16, 50} {
		want := mambaGradRun(t, New(1), chunk)
		for _, workers := range []int{2, 3, 8} {
			got := mambaGradRun(t, New(workers), chunk)
			for i := range want {
				if !slices.Equal(math32bits(got[i]), math32bits(want[i])) {
					t.Errorf("chunk %d, %d workers: output %d differs from one worker's", chunk, workers, i)
				}
			}
		}
	}
}

func math32bits(v []float32) []uint32 {
	out := make([]uint32, len(v))
	for i, f := range v {
		out[i] = math.Float32bits(f)
	}
	return out
}

// Like the forward chunked scan, the backward needs decays ≤ 1.
func TestSSDChunkScanBackwardDomain(t *testing.T) {
	be := New(2)
	up := func(v float32, shape ...int) kernels.Tensor {
		host := make([]float32, product(shape))
		for i := range host {
			host[i] = v * float32(1+i%3)
		}
		x, err := be.Upload(host, kernels.F32, shape...)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	x, dy := up(0.5, 1, 4, 2, 3), up(0.5, 1, 4, 2, 3)
	B := up(0.25, 1, 4, 1, 2)
	grads := func() (dx, ddt, dA, dB, dC kernels.Tensor) {
		return up(0, 1, 4, 2, 3), up(0, 1, 4, 2), up(0, 2), up(0, 1, 4, 1, 2), up(0, 1, 4, 1, 2)
	}
	dx, ddt, dA, dB, dC := grads()
	if err := be.SSDChunkScanBackward(dx, ddt, dA, dB, dC, nil, dy, x, up(0.1, 1, 4, 2), up(0.5, 2), B, B, nil, 2); err == nil {
		t.Error("A > 0: no error")
	}
	if err := be.SSDChunkScanBackward(dx, ddt, dA, dB, dC, nil, dy, x, up(-0.1, 1, 4, 2), up(-0.5, 2), B, B, nil, 2); err == nil {
		t.Error("dt < 0: no error")
	}
	if err := be.SSDChunkScanBackward(dx, ddt, dA, dB, dC, nil, dy, x, up(0.1, 1, 4, 2), up(-0.5, 2), B, B, nil, 2); err != nil {
		t.Errorf("A ≤ 0, dt ≥ 0: %v", err)
	}
}

// Phi-2 sizes (bench_test.go's phiScan): one sample of 1024 tokens
// through one mixer's scan, 32 heads of 80, d_state 80, for the chunks the
// forward benchmarks use.
func BenchmarkSSDChunkScanBackward(b *testing.B) {
	const l = 1024
	for _, chunk := range []int{16, 64} {
		b.Run(fmt.Sprintf("phi2/L=%d/chunk=%d", l, chunk), func(b *testing.B) {
			be := New(0)
			in := phiScan(b, be, l)
			rng := rand.New(rand.NewPCG(5, 6))
			dy := uploadRand(b, be, rng, -1, 1, kernels.F32, 1, l, phiHeads, phiP)
			dx := uploadRand(b, be, rng, 0, 0, kernels.F32, 1, l, phiHeads, phiP)
			ddt := uploadRand(b, be, rng, 0, 0, kernels.F32, 1, l, phiHeads)
			dA, dD := uploadRand(b, be, rng, 0, 0, kernels.F32, phiHeads), uploadRand(b, be, rng, 0, 0, kernels.F32, phiHeads)
			dB := uploadRand(b, be, rng, 0, 0, kernels.F32, 1, l, phiHeads, phiP)
			dC := uploadRand(b, be, rng, 0, 0, kernels.F32, 1, l, phiHeads, phiP)
			clk := startCPU(b)
			for b.Loop() {
				if err := be.SSDChunkScanBackward(dx, ddt, dA, dB, dC, dD, dy, in.x, in.dt, in.A, in.B, in.C, in.D, chunk); err != nil {
					b.Fatal(err)
				}
			}
			reportTokens(b, l, clk)
		})
	}
}

// The conv over a Phi-2 mixer's x|B|C (3·2560 channels, kernel 4, SiLU)
// for 1024 tokens.
func BenchmarkCausalConv1dBackward(b *testing.B) {
	const l, ch, k = 1024, 3 * phiModel, 4
	be := New(0)
	rng := rand.New(rand.NewPCG(7, 8))
	up := func(shape ...int) kernels.Tensor { return uploadRand(b, be, rng, -0.5, 0.5, kernels.F32, shape...) }
	du, dw, db, dout, u, w, bias := up(1, l, ch), up(ch, k), up(ch), up(1, l, ch), up(1, l, ch), up(ch, k), up(ch)
	clk := startCPU(b)
	for b.Loop() {
		if err := be.CausalConv1dBackward(du, dw, db, dout, u, w, bias, true); err != nil {
			b.Fatal(err)
		}
	}
	reportTokens(b, l, clk)
}

// The gated norm of a Phi-2 mixer (2560 channels in groups of 80) for
// 1024 tokens.
func BenchmarkGatedRMSNormBackward(b *testing.B) {
	const l = 1024
	be := New(0)
	rng := rand.New(rand.NewPCG(9, 10))
	up := func(shape ...int) kernels.Tensor { return uploadRand(b, be, rng, -0.5, 0.5, kernels.F32, shape...) }
	dy, dz, dw, dout, y, z, w := up(l, phiModel), up(l, phiModel), up(phiModel), up(l, phiModel), up(l, phiModel), up(l, phiModel), up(phiModel)
	clk := startCPU(b)
	for b.Loop() {
		if err := be.GatedRMSNormBackward(dy, dz, dw, dout, y, z, w, phiP, 1e-5); err != nil {
			b.Fatal(err)
		}
	}
	reportTokens(b, l, clk)
}
