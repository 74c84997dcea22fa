package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/matsurgery/matsurgery/kernels/conformance"
	"github.com/matsurgery/matsurgery/kernels/reference"
)

// tc2Case is one launch of ssd_tc2.cu: sizes, heads of x, B and C, the
// chunk, the headdim columns a warp (cw) and a block (pb).
type tc2Case struct {
	nb, l, h, p, n  int
	hx, hb, hc      int
	chunk, cw, pb   int
	state, d, bf16d bool
}

// recurrenceGQA is the Mamba-2 recurrence in float64 with separate head
// counts for x, B and C (head h reads x head h/(H/hx), and likewise):
// H ← exp(dt·A)·H + dt·x⊗B, y = H·C + D·x. It returns y [nb,l,h,p] and
// the final state [nb,h,p,n] (st, when not nil, is the initial state).
func recurrenceGQA(c tc2Case, x, dt, A, B, C, D, st []float64) (y, state []float64) {
	y = make([]float64, c.nb*c.l*c.h*c.p)
	state = make([]float64, c.nb*c.h*c.p*c.n)
	if st != nil {
		copy(state, st)
	}
	for b := range c.nb {
		for h := range c.h {
			hx, hb, hc := h/(c.h/c.hx), h/(c.h/c.hb), h/(c.h/c.hc)
			for t := range c.l {
				d := dt[(b*c.l+t)*c.h+h]
				decay := math.Exp(d * A[h])
				bt := B[((b*c.l+t)*c.hb+hb)*c.n:][:c.n]
				ct := C[((b*c.l+t)*c.hc+hc)*c.n:][:c.n]
				for p := range c.p {
					xv := x[((b*c.l+t)*c.hx+hx)*c.p+p]
					s := state[((b*c.h+h)*c.p+p)*c.n:][:c.n]
					sum := 0.0
					for n := range c.n {
						s[n] = decay*s[n] + d*xv*bt[n]
						sum += s[n] * ct[n]
					}
					if D != nil {
						sum += D[h] * xv
					}
					y[((b*c.l+t)*c.h+h)*c.p+p] = sum
				}
			}
		}
	}
	return y, state
}

// TestChunkScanTC2 launches ssd_tc2.cu directly (chosen warp and block
// widths) on fresh random bf16 x, B, C and float32 or bf16 dt, and checks
// y and the final state against the float64 recurrence: headdim 16–128,
// d_state 16–128, chunks of 32 and 64, one chunk, whole chunks and
// partial last chunks (down to one token), initial states, D, separate
// head counts for x, B and C, blocks that take part of the headdim.
func TestChunkScanTC2(t *testing.T) {
	be := testBackend(t)
	rng := rand.New(rand.NewPCG(41, 42))
	const tol = 2e-5 // as TestChunkScanBF16: float32 operands as two bf16 terms
	for _, order := range []string{"SSD_GW_LATE=0", "SSD_GW_LATE=1"} {
		for _, c := range tc2Cases {
			t.Run(fmt.Sprintf("%s/l=%d,p=%d,n=%d,chunk=%d,cw=%d,pb=%d", order, c.l, c.p, c.n, c.chunk, c.cw, c.pb), func(t *testing.T) {
				checkTC2(t, be, rng, c, tol, order)
			})
		}
	}
}

// tc2Cases are TestChunkScanTC2's launches.
var tc2Cases = []tc2Case{
	{nb: 1, l: 150, h: 2, p: 80, n: 80, hx: 2, hb: 1, hc: 1, chunk: 64, cw: 8, pb: 80, state: true, d: true},
	{nb: 1, l: 150, h: 2, p: 80, n: 80, hx: 2, hb: 1, hc: 1, chunk: 64, cw: 16, pb: 80, state: true, d: true},
	{nb: 1, l: 100, h: 2, p: 64, n: 64, hx: 1, hb: 2, hc: 1, chunk: 32, cw: 16, pb: 64, state: true, bf16d: true},
	{nb: 2, l: 70, h: 2, p: 128, n: 128, hx: 2, hb: 2, hc: 2, chunk: 64, cw: 16, pb: 128, state: true, d: true},
	{nb: 1, l: 64, h: 1, p: 16, n: 16, hx: 1, hb: 1, hc: 1, chunk: 64, cw: 16, pb: 16},
	{nb: 1, l: 40, h: 3, p: 48, n: 32, hx: 3, hb: 3, hc: 3, chunk: 32, cw: 8, pb: 16, state: true, d: true},
	{nb: 1, l: 129, h: 2, p: 80, n: 128, hx: 2, hb: 1, hc: 2, chunk: 64, cw: 8, pb: 16, state: true},
	{nb: 1, l: 128, h: 1, p: 32, n: 64, hx: 1, hb: 1, hc: 1, chunk: 64, cw: 8, pb: 32, d: true, bf16d: true},
	{nb: 1, l: 97, h: 4, p: 64, n: 80, hx: 2, hb: 4, hc: 1, chunk: 32, cw: 8, pb: 32, state: true, d: true},
}

// checkTC2 runs one launch of ssd_tc2.cu (with the further -D def) on
// fresh inputs and checks y and the final state against recurrenceGQA.
func checkTC2(t *testing.T, be *Backend, rng *rand.Rand, c tc2Case, tol float64, def string) {
	ey, es := runTC2(t, be, rng, c, tc2SharedBytes(c.chunk, c.pb, c.n), def)
	if !(ey <= tol) {
		t.Errorf("y relative error %.3g > %.3g", ey, tol)
	} else {
		t.Logf("y relative error %.3g", ey)
	}
	if c.state && !(es <= tol) {
		t.Errorf("final state relative error %.3g > %.3g", es, tol)
	}
}

// runTC2 runs one launch of ssd_tc2.cu with smem bytes of shared memory
// and the further -D definitions defs on fresh inputs (D in bf16 when dt
// is) and returns the relative errors of y and of the final state (0
// without one) against recurrenceGQA.
func runTC2(t *testing.T, be *Backend, rng *rand.Rand, c tc2Case, smem int, defs ...string) (ey, es float64) {
	t.Helper()
	x, xt := bf16Array(t, be, rng, -1, 1, c.nb, c.l, c.hx, c.p)
	arr := f32Array
	if c.bf16d {
		arr = bf16Array
	}
	dt, dtt := arr(t, be, rng, 0.001, 0.3, c.nb, c.l, c.h)
	A, At := f32Array(t, be, rng, -8, -0.5, c.h)
	B, Bt := bf16Array(t, be, rng, -1, 1, c.nb, c.l, c.hb, c.n)
	C, Ct := bf16Array(t, be, rng, -1, 1, c.nb, c.l, c.hc, c.n)
	var Dv, st []float64
	s := &scan{x: xt.(*Tensor), dt: dtt.(*Tensor), A: At.(*Tensor), B: Bt.(*Tensor), C: Ct.(*Tensor),
		nb: c.nb, l: c.l, h: c.h, p: c.p, n: c.n, hx: c.hx, hb: c.hb, hc: c.hc}
	if c.d {
		D, Dt := arr(t, be, rng, 0.5, 1.5, c.h)
		Dv, s.D = D.Data, Dt.(*Tensor)
	}
	if c.state {
		sa, stt := f32Array(t, be, rng, -1, 1, c.nb, c.h, c.p, c.n)
		st, s.state = sa.Data, stt.(*Tensor)
	}
	s.y = poisoned(t, be, c.nb, c.l, c.h, c.p).(*Tensor)
	wantY, wantS := recurrenceGQA(c, x.Data, dt.Data, A.Data, B.Data, C.Data, Dv, st)
	err := be.do("ssd_tc2", func() error {
		return be.launchTC("ssd_tc2", "ssd_tc2", "k_ssd_tc2", smem, s, c.chunk, c.pb, c.cw,
			append([]string{fmt.Sprintf("SSD_CW=%d", c.cw)}, defs...)...)
	})
	if err != nil {
		t.Fatal(err)
	}
	ey = conformance.RelErr(download(t, be, s.y), wantY)
	if c.state {
		es = conformance.RelErr(download(t, be, s.state), wantS)
	}
	return ey, es
}

// TestChunkScanTC2Dispatch turns tcPipelined on and runs SSDChunkScan
// (with 8 and 16 columns a warp) and LinearAttention through the backend,
// against the package references: the switch, the shared-memory size the
// split is chosen with, and chunks of 256 run as 64 (the backend sends
// chunks of 64 to ssd_tc2.cu; TestChunkScanTC2 runs its chunks of 32).
func TestChunkScanTC2Dispatch(t *testing.T) {
	saved := tcPipelined
	defer func() { tcPipelined = saved }()
	tcPipelined = true
	withWarpCols(t, func(t *testing.T) {
		be := testBackend(t)
		rng := rand.New(rand.NewPCG(43, 44))
		for _, c := range []scanCase{
			{b: 2, l: 150, h: 4, p: 80, g: 2, n: 80, chunk: 64, state: true, d: true},
			{b: 1, l: 100, h: 2, p: 64, g: 1, n: 128, chunk: 256, state: true},
			{b: 1, l: 90, h: 2, p: 32, g: 2, n: 64, chunk: 64, d: true, bf16dt: true},
		} {
			ey, es := runScanCase(t, be, rng, c, true)
			if !(ey <= 2e-5) {
				t.Errorf("%+v: y relative error %.3g > 2e-5", c, ey)
			} else {
				t.Logf("%+v: y relative error %.3g", c, ey)
			}
			if c.state && !(es <= 2e-5) {
				t.Errorf("%+v: final state relative error %.3g > 2e-5", c, es)
			}
		}
		var loaded []string
		_ = be.do("modules", func() error {
			for key := range be.modules {
				loaded = append(loaded, key)
			}
			return nil
		})
		if !slices.ContainsFunc(loaded, func(k string) bool { return strings.HasPrefix(k, "ssd_tc2 ") }) ||
			slices.ContainsFunc(loaded, func(k string) bool { return strings.HasPrefix(k, "ssd_tc ") }) {
			t.Errorf("with tcPipelined, SSDChunkScan loaded modules %q; want ssd_tc2 only", loaded)
		}
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
		if e := conformance.RelErr(download(t, be, out), want.Data); !(e <= 2e-5) {
			t.Errorf("linear attention: relative error %.3g > 2e-5", e)
		}
	})
}
