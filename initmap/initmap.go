// Package initmap builds a Mamba-2 mixer from the attention it replaces
// (MaTVLM): V→x, K→B, Q→C, o_proj→out_proj, the rest Mamba-2's usual random or
// constant initialisation. It is pure: tensors in, tensors out, no I/O, and
// its randomness comes from a seeded stream per (layer, tensor), so the output
// depends only on the inputs and the seed, never on scheduling.
package initmap

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"

	"github.com/matsurgery/matsurgery/formats"
)

// Tensor is a tensor's raw bytes with its dtype and shape.
type Tensor struct {
	DType formats.DType
	Shape []int64
	Data  []byte
}

// Sizes are a layer's attention sizes; the mixer's follow (SPEC §3).
type Sizes struct {
	DModel   int // hidden size d
	NHeads   int // attention heads H = Mamba heads = groups
	NKVHeads int // KV heads
	HeadDim  int // P = headdim = d_state
}

func (s Sizes) DInner() int  { return s.NHeads * s.HeadDim }
func (s Sizes) DXB() int     { return s.NKVHeads * s.HeadDim }
func (s Sizes) ConvDim() int { return 2*s.DXB() + s.DInner() }
func (s Sizes) InProjRows() int {
	return 2*s.DInner() + 2*s.DXB() + s.NHeads
}

// Validate checks the sizes describe a valid mixer.
func (s Sizes) Validate() error {
	if s.DModel <= 0 || s.NHeads <= 0 || s.NKVHeads <= 0 || s.HeadDim <= 0 {
		return fmt.Errorf("sizes %+v: all must be positive", s)
	}
	if s.NHeads%s.NKVHeads != 0 {
		return fmt.Errorf("%d heads is not a multiple of %d KV heads", s.NHeads, s.NKVHeads)
	}
	return nil
}

// Options are the random parts' distributions (reference defaults in Defaults).
type Options struct {
	DtMin, DtMax, DtFloor float64 // dt log-uniform in [DtMin, DtMax], floored at DtFloor
	AMin, AMax            float64 // A_log = log U(AMin, AMax)
	ConvBound             float64 // conv weight and bias U(±ConvBound) (PyTorch's default for fan-in 4: 0.5)
	KeepBias              bool    // carry q/k/v/o biases into in_proj/out_proj biases
	DType                 formats.DType
	ConvKernel            int
}

// Defaults are the reference code's values.
func Defaults() Options {
	return Options{DtMin: 1e-3, DtMax: 0.1, DtFloor: 1e-4, AMin: 1, AMax: 16, ConvBound: 0.5, ConvKernel: 4}
}

// Validate checks option ranges.
func (o Options) Validate() error {
	switch {
	case !(o.DtMin > 0 && o.DtMax >= o.DtMin):
		return fmt.Errorf("dt range [%g, %g]: need 0 < dt-min ≤ dt-max", o.DtMin, o.DtMax)
	case !(o.DtFloor >= 0):
		return fmt.Errorf("dt floor %g: must be ≥ 0", o.DtFloor)
	case !(o.AMin > 0 && o.AMax >= o.AMin):
		return fmt.Errorf("A range [%g, %g]: need 0 < a-min ≤ a-max", o.AMin, o.AMax)
	case !(o.ConvBound >= 0):
		return fmt.Errorf("conv bound %g: must be ≥ 0", o.ConvBound)
	case o.ConvKernel <= 0:
		return fmt.Errorf("conv kernel %d: must be positive", o.ConvKernel)
	}
	switch o.DType {
	case formats.F32, formats.BF16, formats.F16, formats.F64:
	default:
		return fmt.Errorf("output dtype %q: must be F32, BF16, F16 or F64", o.DType)
	}
	return nil
}

// Attention holds one layer's attention tensors (biases nil when absent).
type Attention struct {
	Q, K, V, O                 *Tensor
	QBias, KBias, VBias, OBias *Tensor
}

// Names of the mixer's tensors relative to "…layers.N.mamba.".
const (
	InProj     = "in_proj.weight"
	InProjBias = "in_proj.bias"
	Conv1dW    = "conv1d.weight"
	Conv1dB    = "conv1d.bias"
	DtBias     = "dt_bias"
	ALog       = "A_log"
	DSkip      = "D"
	NormW      = "norm.weight"
	OutProj    = "out_proj.weight"
	OutProjB   = "out_proj.bias"
)

// Order is the order the mixer's tensors are written in.
func Order(keepBias bool) []string {
	if keepBias {
		return []string{InProj, InProjBias, Conv1dW, Conv1dB, DtBias, ALog, DSkip, NormW, OutProj, OutProjB}
	}
	return []string{InProj, Conv1dW, Conv1dB, DtBias, ALog, DSkip, NormW, OutProj}
}

// Shapes of the mixer's tensors.
func Shapes(s Sizes, o Options) map[string][]int64 {
	d, di, h := int64(s.DModel), int64(s.DInner()), int64(s.NHeads)
	m := map[string][]int64{
		InProj:  {int64(s.InProjRows()), d},
		Conv1dW: {int64(s.ConvDim()), 1, int64(o.ConvKernel)},
		Conv1dB: {int64(s.ConvDim())},
		DtBias:  {h},
		ALog:    {h},
		DSkip:   {h},
		NormW:   {di},
		OutProj: {d, di},
	}
	if o.KeepBias {
		m[InProjBias] = []int64{int64(s.InProjRows())}
		m[OutProjB] = []int64{d}
	}
	return m
}

// Stream returns the random stream of one tensor of one layer: PCG seeded by
// the seed and a hash of (layer, tensor, part), so every tensor's values are
// independent of the order tensors are built in.
func Stream(seed uint64, layer int, name string) *rand.Rand {
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(layer))
	h.Write(b[:])
	h.Write([]byte(name))
	return rand.New(rand.NewPCG(seed, h.Sum64()))
}

// Mixer builds the Mamba-2 mixer of one layer from its attention.
func Mixer(s Sizes, att Attention, o Options, seed uint64, layer int) (map[string]*Tensor, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	d, di, dxb, h := s.DModel, s.DInner(), s.DXB(), s.NHeads
	if err := expect("q_proj", att.Q, di, d); err != nil {
		return nil, err
	}
	if err := expect("k_proj", att.K, dxb, d); err != nil {
		return nil, err
	}
	if err := expect("v_proj", att.V, dxb, d); err != nil {
		return nil, err
	}
	if err := expect("o_proj", att.O, d, di); err != nil {
		return nil, err
	}
	out := map[string]*Tensor{}
	shapes := Shapes(s, o)
	es := o.DType.Size()
	rowBytes := d * es
	bound := 1 / math.Sqrt(float64(d))

	// in_proj: z | x=V | B=K | C=Q | dt.
	in := &Tensor{DType: o.DType, Shape: shapes[InProj], Data: make([]byte, s.InProjRows()*rowBytes)}
	off := 0
	fill := func(rows int, name string) error {
		v := uniform(Stream(seed, layer, name), rows*d, -bound, bound)
		return encodeInto(in.Data[off:off+rows*rowBytes], o.DType, v)
	}
	if err := fill(di, "in_proj.z"); err != nil {
		return nil, err
	}
	off += di * rowBytes
	for _, src := range []struct {
		t    *Tensor
		rows int
	}{{att.V, dxb}, {att.K, dxb}, {att.Q, di}} {
		if err := convertInto(in.Data[off:off+src.rows*rowBytes], o.DType, src.t); err != nil {
			return nil, err
		}
		off += src.rows * rowBytes
	}
	if err := fill(h, "in_proj.dt"); err != nil {
		return nil, err
	}
	out[InProj] = in

	if o.KeepBias {
		b := &Tensor{DType: o.DType, Shape: shapes[InProjBias], Data: make([]byte, s.InProjRows()*es)}
		boff := 0
		put := func(n int, src *Tensor, name string) error {
			dst := b.Data[boff : boff+n*es]
			boff += n * es
			switch {
			case src != nil:
				if err := expect(name, src, n); err != nil {
					return err
				}
				return convertInto(dst, o.DType, src)
			case name == "z" || name == "dt":
				return encodeInto(dst, o.DType, uniform(Stream(seed, layer, "in_proj.bias."+name), n, -bound, bound))
			default: // the teacher has no such bias: zero, which is what it computed
				return nil
			}
		}
		for _, p := range []struct {
			n    int
			src  *Tensor
			name string
		}{{di, nil, "z"}, {dxb, att.VBias, "v_proj.bias"}, {dxb, att.KBias, "k_proj.bias"}, {di, att.QBias, "q_proj.bias"}, {h, nil, "dt"}} {
			if err := put(p.n, p.src, p.name); err != nil {
				return nil, err
			}
		}
		out[InProjBias] = b
		ob := &Tensor{DType: o.DType, Shape: shapes[OutProjB], Data: make([]byte, d*es)}
		if att.OBias != nil {
			if err := expect("o_proj.bias", att.OBias, d); err != nil {
				return nil, err
			}
			if err := convertInto(ob.Data, o.DType, att.OBias); err != nil {
				return nil, err
			}
		}
		out[OutProjB] = ob
	}

	conv := s.ConvDim()
	cw := uniform(Stream(seed, layer, Conv1dW), conv*o.ConvKernel, -o.ConvBound, o.ConvBound)
	cb := uniform(Stream(seed, layer, Conv1dB), conv, -o.ConvBound, o.ConvBound)
	var err error
	if out[Conv1dW], err = encoded(o.DType, shapes[Conv1dW], cw); err != nil {
		return nil, err
	}
	if out[Conv1dB], err = encoded(o.DType, shapes[Conv1dB], cb); err != nil {
		return nil, err
	}

	// dt log-uniform in [DtMin, DtMax], floored, stored as inverse softplus.
	rd := Stream(seed, layer, DtBias)
	dtb := make([]float64, h)
	lo, hi := math.Log(o.DtMin), math.Log(o.DtMax)
	for i := range dtb {
		dt := math.Exp(rd.Float64()*(hi-lo) + lo)
		dt = math.Max(dt, o.DtFloor)
		dtb[i] = dt + math.Log(-math.Expm1(-dt))
	}
	if out[DtBias], err = encoded(o.DType, shapes[DtBias], dtb); err != nil {
		return nil, err
	}
	al := uniform(Stream(seed, layer, ALog), h, o.AMin, o.AMax)
	for i := range al {
		al[i] = math.Log(al[i])
	}
	if out[ALog], err = encoded(o.DType, shapes[ALog], al); err != nil {
		return nil, err
	}
	if out[DSkip], err = encoded(o.DType, shapes[DSkip], constant(h, 1)); err != nil {
		return nil, err
	}
	if out[NormW], err = encoded(o.DType, shapes[NormW], constant(di, 1)); err != nil {
		return nil, err
	}
	op := &Tensor{DType: o.DType, Shape: shapes[OutProj], Data: make([]byte, d*di*es)}
	if err := convertInto(op.Data, o.DType, att.O); err != nil {
		return nil, err
	}
	out[OutProj] = op
	return out, nil
}

func expect(name string, t *Tensor, dims ...int) error {
	if t == nil {
		return fmt.Errorf("%s: missing", name)
	}
	if len(t.Shape) != len(dims) {
		return fmt.Errorf("%s: shape %v, want %v", name, t.Shape, dims)
	}
	for i, d := range dims {
		if t.Shape[i] != int64(d) {
			return fmt.Errorf("%s: shape %v, want %v", name, t.Shape, dims)
		}
	}
	if !t.DType.IsFloat() {
		return fmt.Errorf("%s: dtype %s is not a float type", name, t.DType)
	}
	if want := numel(t.Shape) * int64(t.DType.Size()); int64(len(t.Data)) != want {
		return fmt.Errorf("%s: %d bytes, want %d", name, len(t.Data), want)
	}
	return nil
}

func numel(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return n
}

func uniform(r *rand.Rand, n int, lo, hi float64) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = lo + (hi-lo)*r.Float64()
	}
	return v
}

func constant(n int, c float64) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = c
	}
	return v
}

func encoded(dt formats.DType, shape []int64, v []float64) (*Tensor, error) {
	t := &Tensor{DType: dt, Shape: shape, Data: make([]byte, len(v)*dt.Size())}
	return t, encodeInto(t.Data, dt, v)
}
