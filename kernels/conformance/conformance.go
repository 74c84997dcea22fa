// Package conformance checks a kernels.Backend against the float64
// references of package kernels/reference. Every backend's tests call
//
//	conformance.Run(t, func() kernels.Backend { return mybackend.New(…) }, conformance.DefaultTolerances())
//
// Each operation runs on fresh random inputs from a seeded source (the seed
// is derived from the subtest's name, so a failing subtest reproduces when
// run alone), over several shapes: odd sizes, GQA head ratios, sequence
// lengths that are not a multiple of the chunk, initial and final scan
// states, BF16 operands where the contract allows them. Outputs are first
// filled with NaN (poisoned) so that an element the operation forgot to
// write shows up. Results are compared by relative error ‖out−ref‖/‖ref‖,
// with the reference computed in float64 on exactly the values the backend
// received (float32, or bf16-rounded), so the tolerances measure the
// backend's arithmetic alone.
//
// RunGolden (golden.go) adds the checks against the PyTorch float64 outputs
// stored in testdata/golden/kernels.
package conformance

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/reference"
)

// Tolerances are the largest relative errors ‖out−ref‖/‖ref‖ accepted.
// Layout operations (SliceCols, RepeatHeads, Convert, Reshape) must be
// exact whatever the tolerances.
type Tolerances struct {
	F32   float64 // elementwise, norms, matmul, conv, RoPE, softmax attention on F32 inputs
	BF16  float64 // operations with BF16 operands, against the reference on the bf16-rounded values
	Scan  float64 // SSDRecurrence, SSDChunkScan, LinearAttention (long sums of products)
	Mixer float64 // the Mamba2Forward composite against the float64 mixer
}

// DefaultTolerances suit a backend computing in float32 (with float32 or
// wider accumulation): 1e-5 everywhere.
func DefaultTolerances() Tolerances {
	return Tolerances{F32: 1e-5, BF16: 1e-5, Scan: 1e-5, Mixer: 1e-5}
}

// Run runs the whole suite on one backend from newBackend, closed at the end.
func Run(t *testing.T, newBackend func() kernels.Backend, tol Tolerances) {
	t.Helper()
	be := newBackend()
	t.Cleanup(func() {
		if err := be.Close(); err != nil {
			t.Errorf("close %s: %v", be.Name(), err)
		}
	})
	s := &suite{be: be, tol: tol}
	t.Logf("backend %s", be.Name())
	for _, c := range []struct {
		name string
		fn   func(*env)
	}{
		{"Memory", s.memory},
		{"Convert", s.convert},
		{"MatMul", s.matmul},
		{"AddBias", s.addBias},
		{"Elementwise", s.elementwise},
		{"SliceCols", s.sliceCols},
		{"RepeatHeads", s.repeatHeads},
		{"LayerNorm", s.layerNorm},
		{"RMSNorm", s.rmsNorm},
		{"GatedRMSNorm", s.gatedRMSNorm},
		{"DtSoftplus", s.dtSoftplus},
		{"CausalConv1d", s.causalConv1d},
		{"SSD", s.ssd},
		{"SSDExtremeDecay", s.ssdExtreme},
		{"SSDLinearAttentionLimit", s.ssdLinearLimit},
		{"LinearAttention", s.linearAttention},
		{"SoftmaxAttention", s.softmaxAttention},
		{"RoPE", s.rope},
		{"Mamba2Forward", s.mamba2},
		{"Errors", s.errors},
	} {
		t.Run(c.name, func(t *testing.T) { c.fn(s.env(t)) })
	}
}

type suite struct {
	be  kernels.Backend
	tol Tolerances
}

// env is the per-subtest state: the backend, a random source seeded from the
// test's name, and the tensors to free at the end.
type env struct {
	*testing.T
	be  kernels.Backend
	tol Tolerances
	rng *rand.Rand
}

func (s *suite) env(t *testing.T) *env {
	h := fnv.New64a()
	h.Write([]byte(t.Name()))
	return &env{T: t, be: s.be, tol: s.tol, rng: rand.New(rand.NewPCG(h.Sum64(), 0x6d61747375726779))}
}

// ---------------------------------------------------------------------------
// Helpers.

// rand returns an array of uniform values in [lo, hi), rounded to float32.
func (e *env) rand(lo, hi float64, shape ...int) *reference.Array {
	a := reference.New(shape...)
	for i := range a.Data {
		a.Data[i] = float64(float32(lo + (hi-lo)*e.rng.Float64()))
	}
	return a
}

// up uploads a (whose values are float32-exact) as an F32 tensor.
func (e *env) up(a *reference.Array) kernels.Tensor {
	e.Helper()
	t, err := e.be.Upload(a.Float32(), kernels.F32, a.Shape...)
	if err != nil {
		e.Fatalf("upload %v: %v", a.Shape, err)
	}
	e.Cleanup(func() { e.be.Free(t) })
	return t
}

// upBF16 rounds a to bf16 in place (so the reference sees what the backend
// sees) and uploads the bits as a BF16 tensor.
func (e *env) upBF16(a *reference.Array) kernels.Tensor {
	e.Helper()
	bits := make([]uint16, a.Len())
	for i, v := range a.Data {
		bits[i] = reference.BF16Bits(v)
		a.Data[i] = reference.BF16Value(bits[i])
	}
	t, err := e.be.UploadBF16(bits, a.Shape...)
	if err != nil {
		e.Fatalf("upload bf16 %v: %v", a.Shape, err)
	}
	e.Cleanup(func() { e.be.Free(t) })
	return t
}

// upAs uploads a as dtype dt (rounding a to bf16 in place for BF16).
func (e *env) upAs(a *reference.Array, dt kernels.DType) kernels.Tensor {
	e.Helper()
	if dt == kernels.BF16 {
		return e.upBF16(a)
	}
	return e.up(a)
}

// poisoned returns an F32 tensor filled with NaN.
func (e *env) poisoned(shape ...int) kernels.Tensor {
	e.Helper()
	n := 1
	for _, d := range shape {
		n *= d
	}
	host := make([]float32, n)
	for i := range host {
		host[i] = float32(math.NaN())
	}
	t, err := e.be.Upload(host, kernels.F32, shape...)
	if err != nil {
		e.Fatalf("upload poisoned %v: %v", shape, err)
	}
	e.Cleanup(func() { e.be.Free(t) })
	return t
}

// down downloads t as an Array of t's shape.
func (e *env) down(t kernels.Tensor) *reference.Array {
	e.Helper()
	if err := e.be.Sync(); err != nil {
		e.Fatalf("sync: %v", err)
	}
	host, err := e.be.Download(t)
	if err != nil {
		e.Fatalf("download: %v", err)
	}
	a, err := reference.FromFloat32(host, t.Shape()...)
	if err != nil {
		e.Fatalf("download: %v", err)
	}
	return a
}

// must fails the test on an error from the backend.
func (e *env) must(what string, err error) {
	e.Helper()
	if err != nil {
		e.Fatalf("%s: %v", what, err)
	}
}

// want returns a reference result, failing the test on its error.
func (e *env) want(v *reference.Array, err error) *reference.Array {
	e.Helper()
	if err != nil {
		e.Fatalf("reference: %v", err)
	}
	return v
}

// RelErr is ‖got−want‖/‖want‖ (‖·‖ the 2-norm over all elements); when
// want is all zeros it is ‖got‖. A NaN anywhere in got gives +Inf.
func RelErr(got, want []float64) float64 {
	var num, den float64
	for i := range want {
		if math.IsNaN(got[i]) || math.IsInf(got[i], 0) {
			return math.Inf(1)
		}
		d := got[i] - want[i]
		num += d * d
		den += want[i] * want[i]
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

// check compares got with want: same shape, every element finite (an
// unwritten poisoned element is NaN), relative error within tol.
func (e *env) check(what string, got, want *reference.Array, tol float64) {
	e.Helper()
	if got.Len() != want.Len() {
		e.Errorf("%s: %d elements %v, want %d %v", what, got.Len(), got.Shape, want.Len(), want.Shape)
		return
	}
	for i, v := range got.Data {
		if math.IsNaN(v) && !math.IsNaN(want.Data[i]) {
			e.Errorf("%s: element %d of %v is NaN (not written?), want %g", what, i, got.Shape, want.Data[i])
			return
		}
		if math.IsInf(v, 0) && !math.IsInf(want.Data[i], 0) {
			e.Errorf("%s: element %d of %v is %g, want %g", what, i, got.Shape, v, want.Data[i])
			return
		}
	}
	err := RelErr(got.Data, want.Data)
	if err > tol {
		e.Errorf("%s: relative error %.3g > %.3g", what, err, tol)
		return
	}
	e.Logf("%s: relative error %.3g", what, err)
}

// exact requires got to equal want bit for bit (as float64 values, NaN
// matching NaN).
func (e *env) exact(what string, got, want *reference.Array) {
	e.Helper()
	if got.Len() != want.Len() {
		e.Errorf("%s: %d elements, want %d", what, got.Len(), want.Len())
		return
	}
	for i := range want.Data {
		g, w := got.Data[i], want.Data[i]
		if g != w && !(math.IsNaN(g) && math.IsNaN(w)) {
			e.Errorf("%s: element %d is %g, want %g exactly", what, i, g, w)
			return
		}
	}
}

// fails requires a backend call to return an error (and not to panic).
func (e *env) fails(what string, call func() error) {
	e.Helper()
	var err error
	func() {
		defer func() {
			if r := recover(); r != nil {
				e.Errorf("%s: panicked instead of returning an error: %v", what, r)
				err = fmt.Errorf("panic")
			}
		}()
		err = call()
	}()
	if err == nil {
		e.Errorf("%s: no error", what)
	}
}

func prod(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

func name(format string, args ...any) string { return fmt.Sprintf(format, args...) }

// withShape returns a copy of a with another shape of the same length.
func withShape(e *env, a *reference.Array, shape ...int) *reference.Array {
	e.Helper()
	return e.want(a.Reshape(shape...))
}
