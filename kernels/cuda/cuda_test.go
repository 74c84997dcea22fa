package cuda

import (
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/conformance"
	"github.com/matsurgery/matsurgery/kernels/reference"
)

const howToRun = "to run these tests on a GPU machine: CGO_ENABLED=0 go test -c -o cuda.test ./kernels/cuda, copy cuda.test there, run ./cuda.test -test.v (set MATSURGERY_CUDA_LIB_DIR if the CUDA libraries are not found)"

// ssdCols forces the warp width of the tensor-core scan (tcWarpCols) for a
// whole run, e.g. the conformance suite with each width: -cuda.ssdcols=16.
var ssdCols = flag.Int("cuda.ssdcols", 0, "headdim columns a warp of the tensor-core scan (8 or 16; 0: chosen by chunk length)")

func TestMain(m *testing.M) {
	flag.Parse()
	if *ssdCols != 0 {
		if *ssdCols != 8 && *ssdCols != 16 {
			fmt.Fprintf(os.Stderr, "-cuda.ssdcols=%d: want 8 or 16\n", *ssdCols)
			os.Exit(2)
		}
		tcWarpCols = *ssdCols
	}
	os.Exit(m.Run())
}

// withWarpCols runs f for each warp width of the tensor-core scan.
func withWarpCols(t *testing.T, f func(t *testing.T)) {
	saved := tcWarpCols
	defer func() { tcWarpCols = saved }()
	for _, cw := range []int{8, 16} {
		tcWarpCols = cw
		t.Run(fmt.Sprintf("cw=%d", cw), f)
	}
}

// testBackend opens device 0 or skips the test when there is none.
func testBackend(t testing.TB) *Backend {
	t.Helper()
	if ok, why := Available(); !ok {
		t.Skipf("no CUDA device: %s; %s", why, howToRun)
	}
	be, err := New(0)
	if err != nil {
		t.Fatalf("New(0): %v", err)
	}
	t.Cleanup(func() {
		if err := be.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return be.(*Backend)
}

// Tolerances of the CUDA backend: float32 arithmetic throughout, except
// the activations, norms, conv and RoPE (double) and the bf16 tensor-core
// scans (tested separately below).
func tolerances() conformance.Tolerances {
	return conformance.Tolerances{F32: 1e-5, BF16: 1e-5, Scan: 1e-5, Mixer: 1e-5}
}

func TestConformance(t *testing.T) {
	if ok, why := Available(); !ok {
		t.Skipf("no CUDA device: %s; %s", why, howToRun)
	}
	conformance.Run(t, func() kernels.Backend {
		be, err := New(0)
		if err != nil {
			t.Fatalf("New(0): %v", err)
		}
		return be
	}, tolerances())
}

// TestUnavailable checks the no-GPU path: Available explains itself and
// New fails with an error instead of panicking.
func TestUnavailable(t *testing.T) {
	ok, why := Available()
	if why == "" {
		t.Fatalf("Available() = %v with an empty reason", ok)
	}
	if ok {
		t.Skipf("a CUDA device is present (%s)", why)
	}
	be, err := New(0)
	if err == nil || be != nil {
		t.Fatalf("New(0) without CUDA = %v, %v; want an error", be, err)
	}
	if !strings.Contains(err.Error(), "cuda") {
		t.Errorf("New(0) error %q does not say it is about CUDA", err)
	}
	if _, err := Info(); err == nil {
		t.Errorf("Info() without CUDA returned no error")
	}
}

func TestRoundBF16(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	vals := []float32{0, -0, 1, -1.5, float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()), math.MaxFloat32,
		math.Float32frombits(0x3F808000), math.Float32frombits(0x3F818000), math.Float32frombits(1)}
	for range 10000 {
		vals = append(vals, math.Float32frombits(rng.Uint32()))
	}
	for _, v := range vals {
		got, want := roundBF16(v), reference.BF16Bits(float64(v))
		if got != want && !(math.IsNaN(float64(v)) && got&0x7FFF > 0x7F80) {
			t.Fatalf("roundBF16(%g = %#08x) = %#04x, want %#04x", v, math.Float32bits(v), got, want)
		}
	}
}

func TestName(t *testing.T) {
	be := testBackend(t)
	if !strings.HasPrefix(be.Name(), "cuda:0 (") {
		t.Errorf("Name() = %q", be.Name())
	}
	r, err := Info()
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Devices) == 0 || r.Devices[0].Name == "" || r.Devices[0].MemoryBytes == 0 {
		t.Errorf("Info() = %+v", r)
	}
	t.Logf("%s", r)
}

// TestAnyGoroutine calls one backend from several goroutines in turn: the
// owner goroutine keeps the CUDA context on its thread.
func TestAnyGoroutine(t *testing.T) {
	be := testBackend(t)
	rng := rand.New(rand.NewPCG(3, 4))
	host := make([]float32, 1000)
	for i := range host {
		host[i] = float32(rng.NormFloat64())
	}
	x, err := be.Upload(host, kernels.F32, 10, 100)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mu.Lock() // one call at a time, from different goroutines
			defer mu.Unlock()
			out, err := be.Alloc(kernels.F32, 10, 100)
			if err != nil {
				t.Error(err)
				return
			}
			defer be.Free(out)
			if err := be.Scale(out, x, float32(g+1)); err != nil {
				t.Error(err)
				return
			}
			got, err := be.Download(out)
			if err != nil {
				t.Error(err)
				return
			}
			for i, v := range got {
				if v != host[i]*float32(g+1) {
					t.Errorf("goroutine %d: element %d = %g, want %g", g, i, v, host[i]*float32(g+1))
					return
				}
			}
		}()
	}
	wg.Wait()
}

// bf16Array draws uniform values in [lo, hi) rounded to bf16 (so the
// reference sees exactly what the backend gets) and uploads them as BF16.
func bf16Array(t testing.TB, be kernels.Backend, rng *rand.Rand, lo, hi float64, shape ...int) (*reference.Array, kernels.Tensor) {
	t.Helper()
	a := reference.New(shape...)
	bits := make([]uint16, a.Len())
	for i := range a.Data {
		bits[i] = reference.BF16Bits(lo + (hi-lo)*rng.Float64())
		a.Data[i] = reference.BF16Value(bits[i])
	}
	tt, err := be.UploadBF16(bits, shape...)
	if err != nil {
		t.Fatal(err)
	}
	return a, tt
}

func f32Array(t testing.TB, be kernels.Backend, rng *rand.Rand, lo, hi float64, shape ...int) (*reference.Array, kernels.Tensor) {
	t.Helper()
	a := reference.New(shape...)
	for i := range a.Data {
		a.Data[i] = float64(float32(lo + (hi-lo)*rng.Float64()))
	}
	tt, err := be.Upload(a.Float32(), kernels.F32, shape...)
	if err != nil {
		t.Fatal(err)
	}
	return a, tt
}

func download(t testing.TB, be kernels.Backend, x kernels.Tensor) []float64 {
	t.Helper()
	h, err := be.Download(x)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]float64, len(h))
	for i, v := range h {
		out[i] = float64(v)
	}
	return out
}

func poisoned(t testing.TB, be kernels.Backend, shape ...int) kernels.Tensor {
	t.Helper()
	n := 1
	for _, d := range shape {
		n *= d
	}
	h := make([]float32, n)
	for i := range h {
		h[i] = float32(math.NaN())
	}
	x, err := be.Upload(h, kernels.F32, shape...)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// scanCase is one bf16 chunked-scan configuration.
type scanCase struct {
	b, l, h, p, g, n, chunk int
	state, d, bf16dt        bool
}

// TestChunkScanBF16 checks the tensor-core scan (bf16 x, B, C), with 8 and
// 16 headdim columns a warp, against the float64 recurrence on the bf16 values: headdim/d_state 16, 64, 80,
// chunks 32/64/128/256 (256 runs as 64), a partial last chunk, initial and
// final states, GQA groups, the headdim split of small batches, D.
func TestChunkScanBF16(t *testing.T) { withWarpCols(t, testChunkScanBF16) }

func testChunkScanBF16(t *testing.T) {
	be := testBackend(t)
	rng := rand.New(rand.NewPCG(5, 6))
	const tol = 2e-5 // float32 operands carried as two bf16 terms: ≈2^-17 each
	for _, c := range []scanCase{
		{b: 2, l: 150, h: 4, p: 80, g: 4, n: 80, chunk: 64, state: true, d: true},
		{b: 1, l: 64, h: 2, p: 16, g: 1, n: 16, chunk: 64},
		{b: 1, l: 333, h: 3, p: 64, g: 3, n: 32, chunk: 128, state: true, bf16dt: true},
		{b: 1, l: 100, h: 4, p: 32, g: 2, n: 64, chunk: 32, d: true},
		{b: 3, l: 77, h: 2, p: 48, g: 2, n: 16, chunk: 256, state: true},
		// Rows of B and C that the block's threads copy in uneven passes
		// (64 threads, 10 pieces a row), D with a bf16 dt.
		{b: 1, l: 200, h: 2, p: 16, g: 1, n: 80, chunk: 64, state: true, d: true, bf16dt: true},
		{b: 2, l: 300, h: 2, p: 80, g: 2, n: 80, chunk: 128, state: true, d: true},
	} {
		ey, es := runScanCase(t, be, rng, c, true)
		if !(ey <= tol) {
			t.Errorf("%+v: y relative error %.3g > %.3g", c, ey, tol)
		} else {
			t.Logf("%+v: y relative error %.3g", c, ey)
		}
		if c.state && !(es <= tol) {
			t.Errorf("%+v: final state relative error %.3g > %.3g", c, es, tol)
		}
	}
}

// runScanCase draws fresh inputs for c (x, B and C in bf16, or float32
// when !bf16), runs the backend's SSDChunkScan and returns the relative
// errors of y and of the final state (0 without one) against
// reference.SSDRecurrence on the same values.
func runScanCase(t *testing.T, be *Backend, rng *rand.Rand, c scanCase, bf16 bool) (ey, es float64) {
	t.Helper()
	mk := f32Array
	if bf16 {
		mk = bf16Array
	}
	x, xt := mk(t, be, rng, -1, 1, c.b, c.l, c.h, c.p)
	dtArr := f32Array
	if c.bf16dt {
		dtArr = bf16Array
	}
	dt, dtt := dtArr(t, be, rng, 0.001, 0.3, c.b, c.l, c.h)
	A, At := f32Array(t, be, rng, -8, -0.5, c.h)
	B, Bt := mk(t, be, rng, -1, 1, c.b, c.l, c.g, c.n)
	C, Ct := mk(t, be, rng, -1, 1, c.b, c.l, c.g, c.n)
	var D, st *reference.Array
	var Dt, stt kernels.Tensor
	if c.d {
		D, Dt = f32Array(t, be, rng, 0.5, 1.5, c.h)
	}
	if c.state {
		st, stt = f32Array(t, be, rng, -1, 1, c.b, c.h, c.p, c.n)
	}
	wantY, wantS, err := reference.SSDRecurrence(x, dt, A, B, C, D, st)
	if err != nil {
		t.Fatal(err)
	}
	y := poisoned(t, be, c.b, c.l, c.h, c.p)
	if err := be.SSDChunkScan(y, xt, dtt, At, Bt, Ct, Dt, stt, c.chunk); err != nil {
		t.Fatalf("%+v: %v", c, err)
	}
	ey = conformance.RelErr(download(t, be, y), wantY.Data)
	if c.state {
		es = conformance.RelErr(download(t, be, stt), wantS.Data)
	}
	return ey, es
}

// TestLinearAttentionBF16 runs the tensor-core path of LinearAttention
// (bf16 q, k, v, GQA).
func TestLinearAttentionBF16(t *testing.T) { withWarpCols(t, testLinearAttentionBF16) }

func testLinearAttentionBF16(t *testing.T) {
	be := testBackend(t)
	rng := rand.New(rand.NewPCG(7, 8))
	for _, c := range []struct{ b, l, h, hkv, p int }{{2, 90, 4, 2, 64}, {1, 200, 2, 1, 16}} {
		q, qt := bf16Array(t, be, rng, -1, 1, c.b, c.l, c.h, c.p)
		k, kt := bf16Array(t, be, rng, -1, 1, c.b, c.l, c.hkv, c.p)
		v, vt := bf16Array(t, be, rng, -1, 1, c.b, c.l, c.hkv, c.p)
		want, err := reference.LinearAttention(q, k, v)
		if err != nil {
			t.Fatal(err)
		}
		out := poisoned(t, be, c.b, c.l, c.h, c.p)
		if err := be.LinearAttention(out, qt, kt, vt); err != nil {
			t.Fatal(err)
		}
		if e := conformance.RelErr(download(t, be, out), want.Data); !(e <= 2e-5) {
			t.Errorf("%+v: relative error %.3g", c, e)
		} else {
			t.Logf("%+v: relative error %.3g", c, e)
		}
	}
}

func TestExtensions(t *testing.T) {
	if ok, why := Available(); !ok {
		t.Skipf("no CUDA device: %s; %s", why, howToRun)
	}
	conformance.RunExtensions(t, func() kernels.Backend {
		be, err := New(0)
		if err != nil {
			t.Fatalf("New(0): %v", err)
		}
		return be
	}, tolerances())
}

// goldenDir finds testdata/golden/kernels from the package folder (go
// test) or the repository root (a test binary run from there).
func goldenDir() string {
	for _, d := range []string{"../../testdata/golden/kernels", "testdata/golden/kernels"} {
		if st, err := os.Stat(d); err == nil && st.IsDir() {
			return d
		}
	}
	return "../../testdata/golden/kernels"
}

// TestGolden checks the backend against PyTorch float64 outputs.
func TestGolden(t *testing.T) {
	if ok, why := Available(); !ok {
		t.Skipf("no CUDA device: %s; %s", why, howToRun)
	}
	conformance.RunGolden(t, func() kernels.Backend {
		be, err := New(0)
		if err != nil {
			t.Fatalf("New(0): %v", err)
		}
		return be
	}, goldenDir(), tolerances())
}
