package cpu

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/conformance"
	"github.com/matsurgery/matsurgery/kernels/reference"
)

// Phi-2 layer sizes as a MaTVLM mixer (SPEC §3): 32 heads × headdim 80,
// d_state 80, ngroups 32, d_model = d_inner = d_xb = 2560.
const (
	phiHeads = 32
	phiP     = 80
	phiModel = 2560
)

func uploadRand(b *testing.B, be *Backend, rng *rand.Rand, lo, hi float64, dt kernels.DType, shape ...int) kernels.Tensor {
	b.Helper()
	n := 1
	for _, d := range shape {
		n *= d
	}
	host := make([]float32, n)
	for i := range host {
		host[i] = float32(lo + (hi-lo)*rng.Float64())
	}
	t, err := be.Upload(host, dt, shape...)
	if err != nil {
		b.Fatal(err)
	}
	return t
}

type scanInputs struct{ y, x, dt, A, B, C, D kernels.Tensor }

func phiScan(b *testing.B, be *Backend, l int) scanInputs {
	rng := rand.New(rand.NewPCG(uint64(l), 3))
	return scanInputs{
		y:  uploadRand(b, be, rng, 0, 0, kernels.F32, 1, l, phiHeads, phiP),
		x:  uploadRand(b, be, rng, -1, 1, kernels.F32, 1, l, phiHeads, phiP),
		dt: uploadRand(b, be, rng, 0.001, 0.1, kernels.F32, 1, l, phiHeads),
		A:  uploadRand(b, be, rng, -16, -1, kernels.F32, phiHeads),
		B:  uploadRand(b, be, rng, -1, 1, kernels.F32, 1, l, phiHeads, phiP),
		C:  uploadRand(b, be, rng, -1, 1, kernels.F32, 1, l, phiHeads, phiP),
		D:  uploadRand(b, be, rng, 0.5, 1.5, kernels.F32, phiHeads),
	}
}

// cpuClock measures the process CPU time over a benchmark's loop.
type cpuClock struct{ start time.Duration }

func startCPU(b *testing.B) cpuClock {
	b.ResetTimer()
	return cpuClock{processCPUTime()}
}

// reportTokens reports tokens per wall second and per CPU second (the
// second is the fair figure on a machine shared with other work).
func reportTokens(b *testing.B, l int, c cpuClock) {
	tokens := float64(l) * float64(b.N)
	b.ReportMetric(tokens/b.Elapsed().Seconds(), "tokens/s")
	if used := processCPUTime() - c.start; used > 0 {
		b.ReportMetric(tokens/used.Seconds(), "tokens/cpu-s")
	}
}

func BenchmarkSSDRecurrence(b *testing.B) {
	for _, l := range []int{1024, 4096} {
		b.Run(fmt.Sprintf("phi2/L=%d", l), func(b *testing.B) {
			be := New(0)
			in := phiScan(b, be, l)
			clk := startCPU(b)
			for b.Loop() {
				if err := be.SSDRecurrence(in.y, in.x, in.dt, in.A, in.B, in.C, in.D, nil); err != nil {
					b.Fatal(err)
				}
			}
			reportTokens(b, l, clk)
		})
	}
}

func BenchmarkSSDChunkScan(b *testing.B) {
	for _, l := range []int{1024, 4096} {
		for _, chunk := range []int{32, 64, 128} {
			b.Run(fmt.Sprintf("phi2/L=%d/chunk=%d", l, chunk), func(b *testing.B) {
				be := New(0)
				in := phiScan(b, be, l)
				clk := startCPU(b)
				for b.Loop() {
					if err := be.SSDChunkScan(in.y, in.x, in.dt, in.A, in.B, in.C, in.D, nil, chunk); err != nil {
						b.Fatal(err)
					}
				}
				reportTokens(b, l, clk)
			})
		}
	}
}

// BenchmarkMatMul: 1024 tokens × 2560 through a 2560×2560 Linear weight
// (transB), with F32 and BF16 weights.
func BenchmarkMatMul(b *testing.B) {
	const m, k, n = 1024, phiModel, phiModel
	for _, wdt := range []kernels.DType{kernels.F32, kernels.BF16} {
		b.Run(fmt.Sprintf("%dx%dx%d/weight=%v", n, k, m, wdt), func(b *testing.B) {
			be := New(0)
			rng := rand.New(rand.NewPCG(5, 6))
			a := uploadRand(b, be, rng, -1, 1, kernels.F32, m, k)
			w := uploadRand(b, be, rng, -0.02, 0.02, wdt, n, k)
			out := uploadRand(b, be, rng, 0, 0, kernels.F32, m, n)
			clk := startCPU(b)
			for b.Loop() {
				if err := be.MatMul(out, a, w, true); err != nil {
					b.Fatal(err)
				}
			}
			flops := 2 * m * n * k * float64(b.N)
			b.ReportMetric(flops/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			if used := processCPUTime() - clk.start; used > 0 {
				b.ReportMetric(flops/used.Seconds()/1e9, "GFLOP/cpu-s")
			}
		})
	}
}

// BenchmarkMamba2Forward: one Phi-2-sized mixer over 1024 tokens with BF16
// weights (as in a converted checkpoint), chunked scan.
func BenchmarkMamba2Forward(b *testing.B) {
	const l = 1024
	cfg := kernels.Mamba2Config{DModel: phiModel, NHeads: phiHeads, HeadDim: phiP, DState: phiP, NGroups: phiHeads,
		DXB: phiModel, ConvKernel: 4, NormEps: 1e-5, Chunk: 64}
	be := New(0)
	rng := rand.New(rand.NewPCG(9, 10))
	w := conformance.RandomMamba2Weights(rng, cfg, false, true)
	up := func(a *reference.Array) kernels.Tensor {
		t, err := be.Upload(a.Float32(), kernels.BF16, a.Shape...)
		if err != nil {
			b.Fatal(err)
		}
		return t
	}
	bw := kernels.Mamba2Weights{InProj: up(w.InProj), Conv1dWeight: up(w.Conv1dWeight), Conv1dBias: up(w.Conv1dBias),
		DtBias: up(w.DtBias), ALog: up(w.ALog), D: up(w.D), NormWeight: up(w.NormWeight), OutProj: up(w.OutProj)}
	hidden := uploadRand(b, be, rng, -1, 1, kernels.F32, 1, l, phiModel)
	for _, chunked := range []bool{true, false} {
		b.Run(fmt.Sprintf("phi2/L=%d/chunked=%v", l, chunked), func(b *testing.B) {
			clk := startCPU(b)
			for b.Loop() {
				out, err := kernels.Mamba2Forward(be, cfg, bw, hidden, chunked)
				if err != nil {
					b.Fatal(err)
				}
				be.Free(out)
			}
			reportTokens(b, l, clk)
		})
	}
}
