package cpu

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/conformance"
)

func TestConformance(t *testing.T) {
	conformance.Run(t, func() kernels.Backend { return New(0) }, conformance.DefaultTolerances())
}

// The suite on a single worker (no goroutines at all).
func TestConformanceOneWorker(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	conformance.Run(t, func() kernels.Backend { return New(1) }, conformance.DefaultTolerances())
}

func TestGolden(t *testing.T) {
	conformance.RunGolden(t, func() kernels.Backend { return New(0) }, "../../testdata/golden/kernels", conformance.DefaultTolerances())
}

// The portable paths (plain-Go micro-kernel, state-row update and skinny
// dot products, and gonum's sgemm) run on machines without AVX2/FMA: run
// the suite on them here too.
func TestConformancePortable(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	savedGemm, savedKernel, savedToken := gemm, microKernel, ssdToken
	savedSkinnyF32, savedSkinnyBF16 := skinnyF32, skinnyBF16
	t.Cleanup(func() {
		gemm, microKernel, ssdToken = savedGemm, savedKernel, savedToken
		skinnyF32, skinnyBF16 = savedSkinnyF32, savedSkinnyBF16
	})
	ssdToken = ssdTokenGo
	skinnyF32, skinnyBF16 = skinnyF32Go, skinnyBF16Go
	for name, k := range testMicroKernels {
		if name == microKernelName { // the active kernel: TestConformance runs it
			continue
		}
		t.Run("blocked-"+name, func(t *testing.T) {
			gemm, microKernel = gemmBlocked, k
			conformance.Run(t, func() kernels.Backend { return New(0) }, conformance.DefaultTolerances())
		})
	}
	t.Run("gonum", func(t *testing.T) {
		gemm = gemmGonum
		conformance.Run(t, func() kernels.Backend { return New(0) }, conformance.DefaultTolerances())
	})
}

// ssdToken (assembly where available) against float64, for state widths
// around the vector width.
func TestSSDToken(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	for _, sz := range [][2]int{{1, 1}, {3, 7}, {2, 8}, {5, 9}, {4, 16}, {80, 80}, {7, 83}} {
		P, N := sz[0], sz[1]
		for _, f := range []struct {
			name string
			fn   func(S, x, b, c, y []float32, decay, dt, dh float32)
		}{{"active", ssdToken}, {"go", ssdTokenGo}} {
			S, x, b, c := randF32(rng, P*N), randF32(rng, P), randF32(rng, N), randF32(rng, N)
			y := make([]float32, P)
			decay, dt, dh := float32(0.93), float32(0.41), float32(1.25)
			wantS := make([]float64, P*N)
			wantY := make([]float64, P)
			for p := range P {
				for n := range N {
					wantS[p*N+n] = float64(decay)*float64(S[p*N+n]) + float64(dt)*float64(x[p])*float64(b[n])
					wantY[p] += wantS[p*N+n] * float64(c[n])
				}
				wantY[p] += float64(dh) * float64(x[p])
			}
			f.fn(S, x, b, c, y, decay, dt, dh)
			for i := range S {
				if d := math.Abs(float64(S[i]) - wantS[i]); d > 1e-6 {
					t.Fatalf("%s P=%d N=%d: S[%d] = %g, want %g", f.name, P, N, i, S[i], wantS[i])
				}
			}
			for p := range P {
				if d := math.Abs(float64(y[p]) - wantY[p]); d > 1e-5*(1+math.Abs(wantY[p])) {
					t.Errorf("%s P=%d N=%d: y[%d] = %g, want %g", f.name, P, N, p, y[p], wantY[p])
				}
			}
		}
	}
}

// fakeTensor belongs to no backend.
type fakeTensor struct{}

func (fakeTensor) Shape() []int         { return []int{2} }
func (fakeTensor) DType() kernels.DType { return kernels.F32 }
func (fakeTensor) Len() int             { return 2 }

func TestLifecycleErrors(t *testing.T) {
	be := New(2)
	a, err := be.Upload([]float32{1, 2}, kernels.F32, 2)
	if err != nil {
		t.Fatal(err)
	}
	out, err := be.Alloc(kernels.F32, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := be.Scale(out, fakeTensor{}, 2); err == nil {
		t.Error("scale of a foreign tensor: no error")
	}
	if err := be.Scale(out, nil, 2); err == nil {
		t.Error("scale of nil: no error")
	}
	view, err := be.Reshape(a, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	be.Free(view)
	if _, err := be.Download(a); err != nil {
		t.Errorf("owner unusable after freeing its view: %v", err)
	}
	if _, err := be.Download(view); err == nil {
		t.Error("download of a freed view: no error")
	}
	be.Free(a)
	if err := be.Scale(out, a, 2); err == nil {
		t.Error("scale of a freed tensor: no error")
	}
	if _, err := be.Alloc(kernels.F32, 2, 0); err == nil {
		t.Error("alloc with a zero dimension: no error")
	}
	if err := be.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := be.Alloc(kernels.F32, 2); err == nil {
		t.Error("alloc on a closed backend: no error")
	}
}

// The chunked scan refuses growing decays (A > 0 or dt < 0), which its
// clamped exponents cannot represent.
func TestChunkScanRejectsGrowth(t *testing.T) {
	be := New(1)
	up := func(d []float32, shape ...int) kernels.Tensor {
		tt, err := be.Upload(d, kernels.F32, shape...)
		if err != nil {
			t.Fatal(err)
		}
		return tt
	}
	x := up(make([]float32, 4), 1, 2, 1, 2)
	B := up(make([]float32, 4), 1, 2, 1, 2)
	y := up(make([]float32, 4), 1, 2, 1, 2)
	if err := be.SSDChunkScan(y, x, up([]float32{0.1, 0.1}, 1, 2, 1), up([]float32{0.5}, 1), B, B, nil, nil, 2); err == nil {
		t.Error("A > 0: no error")
	}
	if err := be.SSDChunkScan(y, x, up([]float32{0.1, -0.1}, 1, 2, 1), up([]float32{-0.5}, 1), B, B, nil, nil, 2); err == nil {
		t.Error("dt < 0: no error")
	}
	if err := be.SSDRecurrence(y, x, up([]float32{0.1, 0.1}, 1, 2, 1), up([]float32{0.5}, 1), B, B, nil, nil); err != nil {
		t.Errorf("recurrence with A > 0: %v", err)
	}
}
