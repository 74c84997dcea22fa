package initmap

import (
	"bytes"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/matsurgery/matsurgery/formats"
)

func randTensor(r *rand.Rand, dt formats.DType, rows, cols int) *Tensor {
	v := make([]float32, rows*cols)
	for i := range v {
		v[i] = float32(r.NormFloat64() * 0.05)
	}
	t := &Tensor{DType: dt, Shape: []int64{int64(rows), int64(cols)}, Data: make([]byte, len(v)*dt.Size())}
	if err := formats.EncodeFloat32(dt, v, t.Data); err != nil {
		panic(err)
	}
	return t
}

func randVec(r *rand.Rand, dt formats.DType, n int) *Tensor {
	t := randTensor(r, dt, 1, n)
	t.Shape = []int64{int64(n)}
	return t
}

func attention(r *rand.Rand, dt formats.DType, s Sizes, bias bool) Attention {
	a := Attention{
		Q: randTensor(r, dt, s.DInner(), s.DModel), K: randTensor(r, dt, s.DXB(), s.DModel),
		V: randTensor(r, dt, s.DXB(), s.DModel), O: randTensor(r, dt, s.DModel, s.DInner()),
	}
	if bias {
		a.QBias, a.KBias, a.VBias, a.OBias = randVec(r, dt, s.DInner()), randVec(r, dt, s.DXB()), randVec(r, dt, s.DXB()), randVec(r, dt, s.DModel)
	}
	return a
}

func decode(t *testing.T, x *Tensor) []float32 {
	t.Helper()
	n := 1
	for _, d := range x.Shape {
		n *= int(d)
	}
	out := make([]float32, n)
	if err := formats.DecodeFloat32(x.DType, x.Data, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// rows returns the bytes of rows [r0, r0+n) of a [*, cols] tensor.
func rows(x *Tensor, r0, n int) []byte {
	rb := int(x.Shape[1]) * x.DType.Size()
	return x.Data[r0*rb : (r0+n)*rb]
}

var sizes = []Sizes{
	{DModel: 80, NHeads: 4, NKVHeads: 4, HeadDim: 20}, // MHA (phi)
	{DModel: 64, NHeads: 4, NKVHeads: 2, HeadDim: 16}, // GQA (qwen2, llama)
	{DModel: 48, NHeads: 6, NKVHeads: 1, HeadDim: 8},  // MQA
}

func TestMappingIsExactInTheSameDType(t *testing.T) {
	for _, dt := range []formats.DType{formats.BF16, formats.F16, formats.F32} {
		for _, s := range sizes {
			r := rand.New(rand.NewPCG(uint64(s.DModel), 7))
			att := attention(r, dt, s, false)
			o := Defaults()
			o.DType = dt
			m, err := Mixer(s, att, o, 42, 3)
			if err != nil {
				t.Fatal(err)
			}
			in := m[InProj]
			if got, want := in.Shape, []int64{int64(s.InProjRows()), int64(s.DModel)}; got[0] != want[0] || got[1] != want[1] {
				t.Fatalf("in_proj shape %v, want %v", got, want)
			}
			di, dxb := s.DInner(), s.DXB()
			if !bytes.Equal(rows(in, di, dxb), att.V.Data) {
				t.Errorf("%s %+v: x rows ≠ v_proj", dt, s)
			}
			if !bytes.Equal(rows(in, di+dxb, dxb), att.K.Data) {
				t.Errorf("%s %+v: B rows ≠ k_proj", dt, s)
			}
			if !bytes.Equal(rows(in, di+2*dxb, di), att.Q.Data) {
				t.Errorf("%s %+v: C rows ≠ q_proj", dt, s)
			}
			if !bytes.Equal(m[OutProj].Data, att.O.Data) {
				t.Errorf("%s %+v: out_proj ≠ o_proj", dt, s)
			}
			checkRandomParts(t, s, o, m)
		}
	}
}

func checkRandomParts(t *testing.T, s Sizes, o Options, m map[string]*Tensor) {
	t.Helper()
	bound := 1 / math.Sqrt(float64(s.DModel))
	in := decode(t, m[InProj])
	zs := in[:s.DInner()*s.DModel]
	dts := in[(s.InProjRows()-s.NHeads)*s.DModel:]
	for _, part := range [][]float32{zs, dts} {
		lo, hi := minMax(part)
		if lo < -bound*1.01 || hi > bound*1.01 || hi-lo < bound { // spread over most of the range
			t.Errorf("z/dt rows in [%g, %g], want U(±%g)", lo, hi, bound)
		}
	}
	for _, name := range []string{Conv1dW, Conv1dB} {
		lo, hi := minMax(decode(t, m[name]))
		if lo < -o.ConvBound*1.01 || hi > o.ConvBound*1.01 || hi-lo < o.ConvBound/2 {
			t.Errorf("%s in [%g, %g], want U(±%g)", name, lo, hi, o.ConvBound)
		}
	}
	// dt = softplus(dt_bias) lies in [dt_min, dt_max], up to the rounding of dt_bias in its dtype.
	tol := relTol(o.DType) * 8 // |d softplus/dx · x| ≤ |x| near log(dt): relative error of dt ≈ |dt_bias|·ulp
	for _, b := range decode(t, m[DtBias]) {
		dt := math.Log1p(math.Exp(float64(b)))
		if dt < o.DtMin*(1-tol) || dt > o.DtMax*(1+tol) {
			t.Errorf("dt = softplus(%g) = %g outside [%g, %g]", b, dt, o.DtMin, o.DtMax)
		}
	}
	for _, a := range decode(t, m[ALog]) {
		A := -math.Exp(float64(a))
		if A < -o.AMax*(1+relTol(o.DType)) || A > -o.AMin*(1-relTol(o.DType)) {
			t.Errorf("A = %g outside [−%g, −%g]", A, o.AMax, o.AMin)
		}
	}
	for _, name := range []string{DSkip, NormW} {
		for _, v := range decode(t, m[name]) {
			if v != 1 {
				t.Fatalf("%s = %g, want 1", name, v)
			}
		}
	}
}

func relTol(dt formats.DType) float64 {
	switch dt {
	case formats.BF16:
		return 1.0 / 256
	case formats.F16:
		return 1.0 / 2048
	}
	return 1e-6
}

func minMax(v []float32) (float64, float64) {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, x := range v {
		lo, hi = math.Min(lo, float64(x)), math.Max(hi, float64(x))
	}
	return lo, hi
}

func TestMappingRoundsCorrectlyAcrossDTypes(t *testing.T) {
	s := sizes[1]
	r := rand.New(rand.NewPCG(1, 2))
	att := attention(r, formats.F32, s, false)
	o := Defaults()
	o.DType = formats.BF16
	m, err := Mixer(s, att, o, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	v := decode(t, att.V)
	want := make([]byte, len(v)*2)
	formats.EncodeFloat32(formats.BF16, v, want)
	if !bytes.Equal(rows(m[InProj], s.DInner(), s.DXB()), want) {
		t.Error("x rows are not v_proj rounded to bf16")
	}
	// From F64: a single correct rounding, not f64→f32→bf16 double rounding.
	// 1 + 2^-8 + 2^-30 lies just above the bf16 halfway point 1 + 2^-8: it must round up to 1 + 2^-7,
	// while rounding to f32 first gives exactly 1 + 2^-8, which ties to even (1).
	x := 1 + math.Ldexp(1, -8) + math.Ldexp(1, -30)
	out := make([]byte, 2)
	if err := encodeInto(out, formats.BF16, []float64{x}); err != nil {
		t.Fatal(err)
	}
	got := make([]float32, 1)
	formats.DecodeFloat32(formats.BF16, out, got)
	if float64(got[0]) != 1+math.Ldexp(1, -7) {
		t.Errorf("f64 %v → bf16 %v, want %v", x, got[0], 1+math.Ldexp(1, -7))
	}
}

func TestDeterministicAndSeedOnlyChangesRandomParts(t *testing.T) {
	s := sizes[0]
	att := attention(rand.New(rand.NewPCG(3, 4)), formats.BF16, s, false)
	o := Defaults()
	o.DType = formats.BF16
	a, _ := Mixer(s, att, o, 7, 5)
	b, _ := Mixer(s, att, o, 7, 5)
	c, _ := Mixer(s, att, o, 8, 5)
	d, _ := Mixer(s, att, o, 7, 6) // another layer: another stream
	for _, name := range Order(false) {
		if !bytes.Equal(a[name].Data, b[name].Data) {
			t.Errorf("%s differs between identical runs", name)
		}
	}
	for _, name := range []string{Conv1dW, Conv1dB, DtBias, ALog} {
		if bytes.Equal(a[name].Data, c[name].Data) {
			t.Errorf("%s unchanged by another seed", name)
		}
		if bytes.Equal(a[name].Data, d[name].Data) {
			t.Errorf("%s identical across layers", name)
		}
	}
	for _, name := range []string{DSkip, NormW, OutProj} {
		if !bytes.Equal(a[name].Data, c[name].Data) {
			t.Errorf("%s changed with the seed", name)
		}
	}
	di, dxb := s.DInner(), s.DXB()
	if !bytes.Equal(rows(a[InProj], di, 2*dxb+di), rows(c[InProj], di, 2*dxb+di)) {
		t.Error("x|B|C rows changed with the seed")
	}
	if bytes.Equal(rows(a[InProj], 0, di), rows(c[InProj], 0, di)) {
		t.Error("z rows unchanged by another seed")
	}
}

func TestKeepBias(t *testing.T) {
	s := sizes[1]
	att := attention(rand.New(rand.NewPCG(5, 6)), formats.F32, s, true)
	o := Defaults()
	o.DType = formats.F32
	o.KeepBias = true
	m, err := Mixer(s, att, o, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := m[InProjBias].Data
	di, dxb := s.DInner()*4, s.DXB()*4
	if !bytes.Equal(b[di:di+dxb], att.VBias.Data) || !bytes.Equal(b[di+dxb:di+2*dxb], att.KBias.Data) ||
		!bytes.Equal(b[di+2*dxb:2*di+2*dxb], att.QBias.Data) {
		t.Error("in_proj.bias x|B|C ≠ v|k|q biases")
	}
	if !bytes.Equal(m[OutProjB].Data, att.OBias.Data) {
		t.Error("out_proj.bias ≠ o_proj.bias")
	}
	// Without an o bias (qwen2), out_proj.bias is zero: what the teacher computed.
	att.OBias = nil
	m, _ = Mixer(s, att, o, 1, 0)
	for _, v := range decode(t, m[OutProjB]) {
		if v != 0 {
			t.Fatal("missing o bias must give zeros")
		}
	}
}

func TestMixerErrors(t *testing.T) {
	s := sizes[1]
	att := attention(rand.New(rand.NewPCG(9, 9)), formats.F32, s, false)
	o := Defaults()
	o.DType = formats.F32
	bad := att
	bad.K = att.Q // wrong rows for GQA
	if _, err := Mixer(s, bad, o, 1, 0); err == nil || !strings.Contains(err.Error(), "k_proj") {
		t.Errorf("wrong k shape: %v", err)
	}
	bad = att
	bad.V = nil
	if _, err := Mixer(s, bad, o, 1, 0); err == nil || !strings.Contains(err.Error(), "v_proj") {
		t.Errorf("missing v: %v", err)
	}
	o2 := o
	o2.DtMin = 0
	if _, err := Mixer(s, att, o2, 1, 0); err == nil {
		t.Error("dt-min 0 accepted")
	}
	o2 = o
	o2.DType = formats.I8
	if _, err := Mixer(s, att, o2, 1, 0); err == nil {
		t.Error("I8 output accepted")
	}
	if _, err := Mixer(Sizes{DModel: 8, NHeads: 3, NKVHeads: 2, HeadDim: 2}, att, o, 1, 0); err == nil {
		t.Error("3 heads over 2 KV heads accepted")
	}
}
