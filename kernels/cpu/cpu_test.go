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

// The portable paths (plain-Go micro-kernel and state-row update, and
// gonum's sgemm) run on machines without AVX2/FMA: run the suite on them
// here too.
func TestConformancePortable(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	savedGemm, savedKernel, savedRow := gemm, microKernel, ssdRow
	t.Cleanup(func() { gemm, microKernel, ssdRow = savedGemm, savedKernel, savedRow })
	ssdRow = ssdRowGo
	t.Run("blocked-go", func(t *testing.T) {
		gemm, microKernel = gemmBlocked, microKernelGo
		conformance.Run(t, func() kernels.Backend { return New(0) }, conformance.DefaultTolerances())
	})
	t.Run("gonum", func(t *testing.T) {
		gemm = gemmGonum
		conformance.Run(t, func() kernels.Backend { return New(0) }, conformance.DefaultTolerances())
	})
}

// ssdRow (assembly where available) against float64 for lengths around
// the vector width.
func TestSSDRow(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	for _, n := range []int{1, 7, 8, 9, 16, 80, 83} {
		for _, f := range []struct {
			name string
			fn   func(row, b, c []float32, decay, xp float32) float32
		}{{"active", ssdRow}, {"go", ssdRowGo}} {
			row, b, c := randF32(rng, n), randF32(rng, n), randF32(rng, n)
			decay, xp := float32(0.93), float32(-0.41)
			want := make([]float64, n)
			var dot float64
			for i := range n {
				want[i] = float64(decay)*float64(row[i]) + float64(xp)*float64(b[i])
				dot += want[i] * float64(c[i])
			}
			got := f.fn(row, b, c, decay, xp)
			for i := range n {
				if d := math.Abs(float64(row[i]) - want[i]); d > 1e-6 {
					t.Errorf("%s n=%d: row[%d] = %g, want %g", f.name, n, i, row[i], want[i])
				}
			}
			if d := math.Abs(float64(got) - dot); d > 1e-5*(1+math.Abs(dot)) {
				t.Errorf("%s n=%d: dot %g, want %g", f.name, n, got, dot)
			}
		}
	}
}

// Results are bit-identical for 1, 2 and 5 workers and from run to run:
// each output element is computed the same way whatever the split.
func TestDeterminism(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	const b, l, h, p, g, n = 2, 150, 6, 16, 3, 16
	host := func(k int) []float32 { return randF32(rng, k) }
	x, bm, cm := host(b*l*h*p), host(b*l*g*n), host(b*l*g*n)
	dt := make([]float32, b*l*h)
	for i := range dt {
		dt[i] = 0.01 + 0.2*float32(rng.Float64())
	}
	A := []float32{-1, -2, -0.5, -4, -0.1, -8}
	a, w := host(300*257), host(130*257)
	run := func(workers int) [][]float32 {
		be := New(workers)
		up := func(d []float32, shape ...int) kernels.Tensor {
			tt, err := be.Upload(d, kernels.F32, shape...)
			if err != nil {
				t.Fatal(err)
			}
			return tt
		}
		var outs [][]float32
		down := func(tt kernels.Tensor) {
			d, err := be.Download(tt)
			if err != nil {
				t.Fatal(err)
			}
			outs = append(outs, d)
		}
		y := up(make([]float32, b*l*h*p), b, l, h, p)
		st := up(make([]float32, b*h*p*n), b, h, p, n)
		if err := be.SSDChunkScan(y, up(x, b, l, h, p), up(dt, b, l, h), up(A, h), up(bm, b, l, g, n), up(cm, b, l, g, n), nil, st, 32); err != nil {
			t.Fatal(err)
		}
		down(y)
		down(st)
		if err := be.SSDRecurrence(y, up(x, b, l, h, p), up(dt, b, l, h), up(A, h), up(bm, b, l, g, n), up(cm, b, l, g, n), nil, nil); err != nil {
			t.Fatal(err)
		}
		down(y)
		mm := up(make([]float32, 300*130), 300, 130)
		wb, err := be.Upload(w, kernels.BF16, 130, 257)
		if err != nil {
			t.Fatal(err)
		}
		if err := be.MatMul(mm, up(a, 300, 257), wb, true); err != nil {
			t.Fatal(err)
		}
		down(mm)
		q := up(x, b, l, h, p)
		att := up(make([]float32, b*l*h*p), b, l, h, p)
		if err := be.SoftmaxAttention(att, q, q, q, 0.25, true); err != nil {
			t.Fatal(err)
		}
		down(att)
		return outs
	}
	want := run(1)
	for _, workers := range []int{2, 5, 2} {
		got := run(workers)
		for i := range want {
			for j := range want[i] {
				if math.Float32bits(got[i][j]) != math.Float32bits(want[i][j]) {
					t.Fatalf("workers %d: output %d element %d = %g, with one worker %g", workers, i, j, got[i][j], want[i][j])
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
	if err := be.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := be.Alloc(kernels.F32, 2); err == nil {
		t.Error("alloc on a closed backend: no error")
	}
}
