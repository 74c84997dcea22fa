package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/conformance"
	"github.com/matsurgery/matsurgery/kernels/reference"
)

// Tests of the tensor-core flash attention (flash_attention.cu) against
// the float64 reference on the bf16-rounded inputs. Its precision is
// flash-attention's (P, and in the backward dout and dS, rounded to bf16
// for the products), so the tolerance is flashTol; the float32 paths keep
// their own 1e-5 (the conformance runs below, with the switch on).

// flashTol is the relative error allowed against the float64 reference:
// P (and dS, dout) rounded to bf16 costs about 2^-9 a term, averaged over
// many terms.
const flashTol = 5e-3

// flashBackend opens device 0 with MATSURGERY_CUDA_ATTENTION=flash.
func flashBackend(t *testing.T) *Backend {
	t.Helper()
	t.Setenv(attentionEnv, "flash")
	be := testBackend(t)
	if !be.flashAttention {
		t.Fatalf("%s=flash: the backend did not turn flash attention on", attentionEnv)
	}
	return be
}

type flashCase struct {
	nb, l, h, hkv, p int
	causal           bool
}

// flashCases: every head size the model family uses (64, 80, 96, 128) and
// 16, odd lengths (partial tiles of 64), one token, GQA, causal and full.
var flashCases = []flashCase{
	{1, 150, 4, 2, 64, true},
	{2, 77, 2, 1, 80, true},
	{1, 130, 3, 3, 96, false},
	{1, 100, 4, 1, 128, true},
	{1, 70, 2, 2, 16, false},
	{1, 1, 2, 1, 64, true},
	{2, 65, 2, 2, 80, false},
}

// logSumExp is the float64 log-sum-exp of each row's scaled scores, [b, H, l].
func logSumExp(q, k *reference.Array, scale float64, causal bool) []float64 {
	nb, l, H, p := q.Shape[0], q.Shape[1], q.Shape[2], q.Shape[3]
	Hkv := k.Shape[2]
	out := make([]float64, nb*H*l)
	s := make([]float64, l)
	for b := range nb {
		for h := range H {
			hk := h / (H / Hkv)
			for t := range l {
				last := l
				if causal {
					last = t + 1
				}
				m := math.Inf(-1)
				for j := range last {
					var dot float64
					for d := range p {
						dot += q.Data[((b*l+t)*H+h)*p+d] * k.Data[((b*l+j)*Hkv+hk)*p+d]
					}
					s[j] = scale * dot
					m = max(m, s[j])
				}
				var sum float64
				for j := range last {
					sum += math.Exp(s[j] - m)
				}
				out[(b*H+h)*l+t] = m + math.Log(sum)
			}
		}
	}
	return out
}

func TestFlashAttention(t *testing.T) {
	be := flashBackend(t)
	rng := rand.New(rand.NewPCG(81, 82))
	for _, c := range flashCases {
		t.Run(fmt.Sprintf("%+v", c), func(t *testing.T) {
			q, qt := bf16Array(t, be, rng, -1, 1, c.nb, c.l, c.h, c.p)
			k, kt := bf16Array(t, be, rng, -1, 1, c.nb, c.l, c.hkv, c.p)
			v, vt := bf16Array(t, be, rng, -1, 1, c.nb, c.l, c.hkv, c.p)
			// Scores up to about ±2·scale·p/3: 2/√p is the model's
			// scale; ×4 makes the softmax peaked.
			for _, scale := range []float64{1 / math.Sqrt(float64(c.p)), 4 / math.Sqrt(float64(c.p))} {
				sc := float64(float32(scale))
				want, err := reference.SoftmaxAttention(q, k, v, sc, c.causal)
				if err != nil {
					t.Fatal(err)
				}
				out := poisoned(t, be, c.nb, c.l, c.h, c.p)
				if err := be.SoftmaxAttention(out, qt, kt, vt, float32(sc), c.causal); err != nil {
					t.Fatal(err)
				}
				checkRel(t, fmt.Sprintf("scale %.3g out", sc), download(t, be, out), want.Data, flashTol)

				// The log-sum-exp the forward can write.
				lse := poisoned(t, be, c.nb, c.h, c.l)
				err = be.do("flash lse", func() error {
					o := be.ops("softmaxattention")
					s := be.attnOperands(o, out, qt, kt, vt)
					if o.err != nil {
						return o.err
					}
					if !be.useFlash(s) {
						return fmt.Errorf("useFlash is false for bf16 q, k, v of head size %d", c.p)
					}
					return be.flashForward(o.op, s, float32(sc), c.causal, devPtr(lse.(*Tensor).ptr), false)
				})
				if err != nil {
					t.Fatal(err)
				}
				checkRel(t, fmt.Sprintf("scale %.3g lse", sc), download(t, be, lse), logSumExp(q, k, sc, c.causal), 1e-5)
				checkRel(t, fmt.Sprintf("scale %.3g out with lse", sc), download(t, be, out), want.Data, flashTol)
			}
		})
	}
}

func TestFlashAttentionBackward(t *testing.T) {
	be := flashBackend(t)
	rng := rand.New(rand.NewPCG(83, 84))
	saved := flashBQOverride
	defer func() { flashBQOverride = saved }()
	for i, c := range flashCases {
		// Both query tiles of the dK/dV pass, alternately.
		flashBQOverride = []int{32, 64}[i%2]
		t.Run(fmt.Sprintf("%+v/bq=%d", c, flashBQOverride), func(t *testing.T) {
			q, qt := bf16Array(t, be, rng, -1, 1, c.nb, c.l, c.h, c.p)
			k, kt := bf16Array(t, be, rng, -1, 1, c.nb, c.l, c.hkv, c.p)
			v, vt := bf16Array(t, be, rng, -1, 1, c.nb, c.l, c.hkv, c.p)
			dout, doutT := f32Array(t, be, rng, -1, 1, c.nb, c.l, c.h, c.p)
			sc := float64(float32(1 / math.Sqrt(float64(c.p))))
			out := reference.RoundFloat32(mustArray(t)(reference.SoftmaxAttention(q, k, v, sc, c.causal)))
			outT, err := be.Upload(out.Float32(), kernels.F32, out.Shape...)
			if err != nil {
				t.Fatal(err)
			}
			wq, wk, wv, err := reference.SoftmaxAttentionBackward(dout, q, k, v, sc, c.causal)
			if err != nil {
				t.Fatal(err)
			}
			var first [3][]float64
			for run := range 2 {
				dq, dk, dv := poisoned(t, be, q.Shape...), poisoned(t, be, k.Shape...), poisoned(t, be, v.Shape...)
				if err := be.SoftmaxAttentionBackward(dq, dk, dv, doutT, qt, kt, vt, outT, float32(sc), c.causal); err != nil {
					t.Fatal(err)
				}
				got := [3][]float64{download(t, be, dq), download(t, be, dk), download(t, be, dv)}
				if run == 0 {
					checkRel(t, "dq", got[0], wq.Data, flashTol)
					checkRel(t, "dk", got[1], wk.Data, flashTol)
					checkRel(t, "dv", got[2], wv.Data, flashTol)
					first = got
					continue
				}
				for j, name := range []string{"dq", "dk", "dv"} {
					checkExact(t, name+" of a second run", got[j], first[j])
				}
			}
		})
	}
}

// mustArray unwraps a reference result.
func mustArray(t *testing.T) func(*reference.Array, error) *reference.Array {
	return func(a *reference.Array, err error) *reference.Array {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
}

// TestFlashAttentionDispatch: the switch is on by default, "blocked"
// turns it off, unknown values are refused, and with it on only bf16
// q, k, v of a head size that is a multiple of 16 up to 128 take the
// flash kernels.
func TestFlashAttentionDispatch(t *testing.T) {
	t.Setenv(attentionEnv, "")
	if be := testBackend(t); !be.flashAttention {
		t.Errorf("%s unset: flash attention is off", attentionEnv)
	}
	t.Setenv(attentionEnv, "blocked")
	if be := testBackend(t); be.flashAttention {
		t.Errorf("%s=blocked: flash attention is on", attentionEnv)
	}
	t.Setenv(attentionEnv, "fast")
	if be, err := New(0); err == nil {
		_ = be.Close()
		t.Errorf("%s=fast: no error", attentionEnv)
	} else {
		t.Logf("%s=fast: %v", attentionEnv, err)
	}
	be := flashBackend(t)
	rng := rand.New(rand.NewPCG(85, 86))
	for _, c := range []struct {
		p         int
		qf32, use bool
	}{{64, false, true}, {80, false, true}, {128, false, true}, {8, false, false}, {72, false, false}, {64, true, false}} {
		var qt kernels.Tensor
		if c.qf32 {
			_, qt = f32Array(t, be, rng, -1, 1, 1, 3, 2, c.p)
		} else {
			_, qt = bf16Array(t, be, rng, -1, 1, 1, 3, 2, c.p)
		}
		_, kt := bf16Array(t, be, rng, -1, 1, 1, 3, 1, c.p)
		o := be.ops("softmaxattention")
		s := be.attnOperands(o, poisoned(t, be, 1, 3, 2, c.p), qt, kt, kt)
		if o.err != nil {
			t.Fatal(o.err)
		}
		if got := be.useFlash(s); got != c.use {
			t.Errorf("head size %d, f32 q %v: useFlash = %v, want %v", c.p, c.qf32, got, c.use)
		}
		if !c.use {
			continue
		}
		// Operands off the alignment of an allocation stay off the flash
		// kernels.
		for i, pp := range []**Tensor{&s.C, &s.B, &s.x, &s.y} {
			moved := **pp
			moved.ptr += 8 >> (i / 3) // 8 bytes for q, k, v; 4 for out
			saved := *pp
			*pp = &moved
			if be.useFlash(s) {
				t.Errorf("head size %d: operand %d at a misaligned address: useFlash is true", c.p, i)
			}
			*pp = saved
		}
	}
}

// TestBlockedConformance runs the shared suites with flash attention
// off (MATSURGERY_CUDA_ATTENTION=blocked), so the blocked cuBLAS paths
// that the flash kernels replace by default keep their conformance.
func TestBlockedConformance(t *testing.T) {
	if ok, why := Available(); !ok {
		t.Skipf("no CUDA device: %s; %s", why, howToRun)
	}
	t.Setenv(attentionEnv, "blocked")
	newBackend := func() kernels.Backend {
		be, err := New(0)
		if err != nil {
			t.Fatalf("New(0): %v", err)
		}
		if be.(*Backend).flashAttention {
			t.Fatalf("%s=blocked: flash is on", attentionEnv)
		}
		return be
	}
	t.Run("Run", func(t *testing.T) { conformance.Run(t, newBackend, tolerances()) })
	t.Run("RunDenseGrad", func(t *testing.T) { conformance.RunDenseGrad(t, newBackend, tolerances()) })
}
