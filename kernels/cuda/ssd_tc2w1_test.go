package cuda

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/matsurgery/matsurgery/kernels/conformance"
	"github.com/matsurgery/matsurgery/kernels/reference"
)

// Tolerances of ssd_tc2.cu's SSD_W1 variant (tcW1). W rounded to one bf16
// term leaves each element of W·x off by up to 2^-9 relative, so y is good
// to ~1e-3: the bound is FlashAttention's (which rounds P to bf16). The
// state never passes through W, so the final state keeps the exact
// kernel's bound.
const (
	tc2W1TolY     = 5e-3
	tc2W1TolState = 2e-5
	// tc2ExactTol is the exact kernel's bound on y: a W1 result within it
	// would mean SSD_W1 changed nothing.
	tc2ExactTol = 2e-5
)

// tc2W1Cases are TestChunkScanTC2W1's launches: headdim 16/64/80/128,
// d_state 16/64/80/128, partial last chunks (down to one token), whole
// chunks, grouped heads for x, B and C, blocks that take part of the
// headdim, D in float32 and bf16, dt in bf16, with and without an initial
// state, chunks of 64 (the backend's) and 32.
var tc2W1Cases = []tc2Case{
	{nb: 1, l: 150, h: 2, p: 80, n: 80, hx: 2, hb: 1, hc: 1, chunk: 64, cw: 8, pb: 80, state: true, d: true},
	{nb: 1, l: 150, h: 2, p: 80, n: 80, hx: 2, hb: 1, hc: 1, chunk: 64, cw: 16, pb: 80, state: true, d: true},
	{nb: 2, l: 70, h: 2, p: 128, n: 128, hx: 2, hb: 2, hc: 2, chunk: 64, cw: 16, pb: 128, state: true, d: true},
	{nb: 1, l: 129, h: 2, p: 64, n: 64, hx: 2, hb: 1, hc: 2, chunk: 64, cw: 8, pb: 32, state: true, bf16d: true},
	{nb: 1, l: 200, h: 4, p: 80, n: 128, hx: 4, hb: 2, hc: 1, chunk: 64, cw: 8, pb: 16, state: true, d: true},
	{nb: 1, l: 128, h: 2, p: 128, n: 64, hx: 1, hb: 2, hc: 2, chunk: 64, cw: 16, pb: 64, d: true},
	{nb: 1, l: 1, h: 1, p: 16, n: 16, hx: 1, hb: 1, hc: 1, chunk: 64, cw: 16, pb: 16, state: true},
	{nb: 1, l: 97, h: 2, p: 64, n: 80, hx: 1, hb: 2, hc: 1, chunk: 32, cw: 16, pb: 64, d: true, bf16d: true},
}

// TestChunkScanTC2W1 launches ssd_tc2.cu with SSD_W1=1 and the shared
// memory tc2W1SharedBytes gives, on fresh random inputs, against the
// float64 recurrence: y within tc2W1TolY and, since SSD_W1 must change
// the arithmetic, outside the exact kernel's 2e-5; the final state within
// the exact bound. It logs the typical (median) and largest y error.
func TestChunkScanTC2W1(t *testing.T) {
	be := testBackend(t)
	rng := rand.New(rand.NewPCG(51, 52))
	var errs []float64
	for _, c := range tc2W1Cases {
		t.Run(fmt.Sprintf("l=%d,p=%d,n=%d,chunk=%d,cw=%d,pb=%d", c.l, c.p, c.n, c.chunk, c.cw, c.pb), func(t *testing.T) {
			ey, es := runTC2(t, be, rng, c, tc2W1SharedBytes(c.chunk, c.pb, c.n), "SSD_W1=1")
			if !(ey <= tc2W1TolY) {
				t.Errorf("y relative error %.3g > %.3g", ey, tc2W1TolY)
			} else if ey <= tc2ExactTol {
				t.Errorf("y relative error %.3g ≤ %.3g: SSD_W1 seems not to round W to one term", ey, tc2ExactTol)
			}
			if c.state && !(es <= tc2W1TolState) {
				t.Errorf("final state relative error %.3g > %.3g (SSD_W1 must not touch the state)", es, tc2W1TolState)
			}
			t.Logf("y relative error %.3g, final state %.3g", ey, es)
			errs = append(errs, ey)
		})
	}
	if len(errs) > 0 {
		slices.Sort(errs)
		t.Logf("SSD_W1 y relative error over %d launches: median %.3g, largest %.3g", len(errs), errs[len(errs)/2], errs[len(errs)-1])
	}
}

// TestTC2W1SharedBytes pins the shared memory of the SSD_W1 variant at the
// Phi-2 layer size (P = N = 80, chunk 64): the exact kernel's 113,664
// bytes less one term of W's two stages of 10 causal 512-byte blocks,
// which still allows two blocks a multiprocessor (2 × (bytes + 1 KB) ≤
// 228 KB) but not three. At chunks of 32, 3 blocks a stage.
func TestTC2W1SharedBytes(t *testing.T) {
	if got := tc2SharedBytes(64, 80, 80); got != 113664 {
		t.Errorf("tc2SharedBytes(64, 80, 80) = %d, want 113664", got)
	}
	if got, want := tc2W1SharedBytes(64, 80, 80), 113664-2*10*512; got != want {
		t.Errorf("tc2W1SharedBytes(64, 80, 80) = %d, want %d", got, want)
	}
	if got, want := tc2SharedBytes(32, 64, 64)-tc2W1SharedBytes(32, 64, 64), 2*3*512; got != want {
		t.Errorf("chunks of 32: the W1 variant saves %d bytes, want %d", got, want)
	}
}

// TestChunkScanTC2W1Dispatch turns tcW1 (and tcPipelined) on and checks
// that SSDChunkScan with bf16 x, B and C at chunks of 64 and 256 (run as
// 64) takes the SSD_W1 variant of ssd_tc2.cu, to its tolerances against
// the package reference, with 8 and 16 columns a warp; that chunks of 32,
// float32 inputs and LinearAttention keep the exact kernels (2e-5) and
// load no SSD_W1 module; and that with tcW1 off nothing loads one.
func TestChunkScanTC2W1Dispatch(t *testing.T) {
	savedP, savedW := tcPipelined, tcW1
	defer func() { tcPipelined, tcW1 = savedP, savedW }()
	tcPipelined = true
	withWarpCols(t, func(t *testing.T) {
		be := testBackend(t)
		rng := rand.New(rand.NewPCG(53, 54))
		run := func(c scanCase, bf16 bool, w1 bool) {
			t.Helper()
			tcW1 = w1
			before := loadedModules(be)
			ey, es := runScanCase(t, be, rng, c, bf16)
			wantW1 := w1 && bf16 && (c.chunk == 64 || c.chunk > maxChunkTile)
			tolY := tc2ExactTol
			if wantW1 {
				tolY = tc2W1TolY
			}
			if !(ey <= tolY) {
				t.Errorf("%+v bf16=%v tcW1=%v: y relative error %.3g > %.3g", c, bf16, w1, ey, tolY)
			} else {
				t.Logf("%+v bf16=%v tcW1=%v: y relative error %.3g", c, bf16, w1, ey)
			}
			if wantW1 && ey <= tc2ExactTol {
				t.Errorf("%+v: y relative error %.3g ≤ %.3g: not the SSD_W1 variant's arithmetic", c, ey, tc2ExactTol)
			}
			if c.state && !(es <= tc2W1TolState) {
				t.Errorf("%+v: final state relative error %.3g > %.3g", c, es, tc2W1TolState)
			}
			checkW1Loaded(t, fmt.Sprintf("%+v bf16=%v tcW1=%v", c, bf16, w1), before, loadedModules(be), wantW1)
		}
		run(scanCase{b: 2, l: 150, h: 4, p: 80, g: 2, n: 80, chunk: 64, state: true, d: true}, true, true)
		run(scanCase{b: 1, l: 100, h: 2, p: 64, g: 1, n: 128, chunk: 256, state: true}, true, true)
		run(scanCase{b: 1, l: 90, h: 2, p: 32, g: 2, n: 64, chunk: 32, d: true, bf16dt: true}, true, true)
		run(scanCase{b: 1, l: 90, h: 2, p: 32, g: 2, n: 64, chunk: 64, state: true, d: true}, false, true)
		run(scanCase{b: 1, l: 90, h: 2, p: 48, g: 1, n: 64, chunk: 64, state: true, d: true}, true, false)

		tcW1 = true
		before := loadedModules(be)
		q, qt := bf16Array(t, be, rng, -1, 1, 2, 90, 4, 64)
		k, kt := bf16Array(t, be, rng, -1, 1, 2, 90, 2, 64)
		v, vt := bf16Array(t, be, rng, -1, 1, 2, 90, 2, 64)
		want, err := reference.LinearAttention(q, k, v)
		if err != nil {
			t.Fatal(err)
		}
		out := poisoned(t, be, 2, 90, 4, 64)
		if err := be.LinearAttention(out, qt, kt, vt); err != nil {
			t.Fatal(err)
		}
		if e := conformance.RelErr(download(t, be, out), want.Data); !(e <= tc2ExactTol) {
			t.Errorf("linear attention with tcW1: relative error %.3g > %.3g", e, tc2ExactTol)
		}
		checkW1Loaded(t, "linear attention with tcW1", before, loadedModules(be), false)
	})
}

// loadedModules lists the keys ("name defines…") of be's compiled modules.
func loadedModules(be *Backend) []string {
	var keys []string
	_ = be.do("modules", func() error {
		for key := range be.modules {
			keys = append(keys, key)
		}
		return nil
	})
	return keys
}

// checkW1Loaded checks that the modules loaded between before and after
// include an ssd_tc2 module with SSD_W1=1 when want, and none otherwise.
func checkW1Loaded(t *testing.T, what string, before, after []string, want bool) {
	t.Helper()
	var w1 []string
	for _, k := range after {
		if !slices.Contains(before, k) && strings.HasPrefix(k, "ssd_tc2 ") && strings.Contains(k, "SSD_W1=1") {
			w1 = append(w1, k)
		}
	}
	if want && len(w1) == 0 {
		t.Errorf("%s: no ssd_tc2 module with SSD_W1=1 was loaded", what)
	}
	if !want && len(w1) > 0 {
		t.Errorf("%s: loaded %q, want no SSD_W1 module", what, w1)
	}
}
