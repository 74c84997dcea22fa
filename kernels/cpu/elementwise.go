package cpu

import (
	"fmt"
	"math"
	"slices"

	"github.com/matsurgery/matsurgery/kernels"
)

// bf16ToF32 widens bf16 bits to float32 (exact: a 16-bit shift).
func bf16ToF32(dst []float32, src []uint16) {
	for i, b := range src[:len(dst)] {
		dst[i] = math.Float32frombits(uint32(b) << 16)
	}
}

// f32ToBF16 rounds float32 to bf16 bits, nearest even; NaN stays a quiet NaN.
func f32ToBF16(dst []uint16, src []float32) {
	for i, f := range src[:len(dst)] {
		dst[i] = roundBF16(f)
	}
}

func roundBF16(f float32) uint16 {
	bits := math.Float32bits(f)
	if bits&0x7FFFFFFF > 0x7F800000 { // NaN
		return uint16(bits>>16) | 0x0040
	}
	// Adding 0x7FFF plus the lowest kept bit rounds half to even.
	return uint16((bits + 0x7FFF + (bits>>16)&1) >> 16)
}

// elementwise grain: below this many elements one goroutine does the work.
const grainElementwise = 1 << 15

// sameShape loads out and the inputs of an elementwise op as F32 tensors of
// one shape.
func (be *Backend) sameShape(op string, out kernels.Tensor, ins ...kernels.Tensor) (*Tensor, []*Tensor, error) {
	o, err := be.f32Tensor(out, op+" out")
	if err != nil {
		return nil, nil, err
	}
	ts := make([]*Tensor, len(ins))
	for i, in := range ins {
		t, err := be.f32Tensor(in, fmt.Sprintf("%s operand %d", op, i+1))
		if err != nil {
			return nil, nil, err
		}
		if !slices.Equal(t.shape, o.shape) {
			return nil, nil, fmt.Errorf("%s: operand %d has shape %v, out has %v", op, i+1, t.shape, o.shape)
		}
		ts[i] = t
	}
	return o, ts, nil
}

// Add writes a + b.
func (be *Backend) Add(out, a, b kernels.Tensor) error {
	o, in, err := be.sameShape("add", out, a, b)
	if err != nil {
		return err
	}
	x, y, z := in[0].f32, in[1].f32, o.f32
	be.parallelFor(len(z), grainElementwise, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			z[i] = x[i] + y[i]
		}
	})
	return nil
}

// Mul writes a·b elementwise.
func (be *Backend) Mul(out, a, b kernels.Tensor) error {
	o, in, err := be.sameShape("mul", out, a, b)
	if err != nil {
		return err
	}
	x, y, z := in[0].f32, in[1].f32, o.f32
	be.parallelFor(len(z), grainElementwise, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			z[i] = x[i] * y[i]
		}
	})
	return nil
}

// Scale writes s·a.
func (be *Backend) Scale(out, a kernels.Tensor, s float32) error {
	o, in, err := be.sameShape("scale", out, a)
	if err != nil {
		return err
	}
	x, z := in[0].f32, o.f32
	be.parallelFor(len(z), grainElementwise, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			z[i] = s * x[i]
		}
	})
	return nil
}

// silu is x·σ(x) evaluated in float64 and rounded once.
func silu(x float32) float32 {
	v := float64(x)
	return float32(v / (1 + math.Exp(-v)))
}

// SiLU writes a·σ(a).
func (be *Backend) SiLU(out, a kernels.Tensor) error {
	o, in, err := be.sameShape("silu", out, a)
	if err != nil {
		return err
	}
	x, z := in[0].f32, o.f32
	be.parallelFor(len(z), grainElementwise/8, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			z[i] = silu(x[i])
		}
	})
	return nil
}

// GELU writes GELU(a) in the exact (erf) or tanh form, evaluated in float64.
func (be *Backend) GELU(out, a kernels.Tensor, form kernels.GELUForm) error {
	o, in, err := be.sameShape("gelu", out, a)
	if err != nil {
		return err
	}
	var f func(float64) float64
	switch form {
	case kernels.GELUErf:
		f = func(v float64) float64 { return 0.5 * v * (1 + math.Erf(v/math.Sqrt2)) }
	case kernels.GELUTanh:
		const c = 0.7978845608028654 // √(2/π)
		f = func(v float64) float64 { return 0.5 * v * (1 + math.Tanh(c*(v+0.044715*v*v*v))) }
	default:
		return fmt.Errorf("gelu: unknown form %d", form)
	}
	x, z := in[0].f32, o.f32
	be.parallelFor(len(z), grainElementwise/8, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			z[i] = float32(f(float64(x[i])))
		}
	})
	return nil
}

// Convert writes a into out converting dtype (f32→bf16 rounds to nearest
// even, bf16→f32 is exact); shapes must hold the same number of elements
// and equal shapes are expected.
func (be *Backend) Convert(out, a kernels.Tensor) error {
	o, err := be.tensor(out, "convert out")
	if err != nil {
		return err
	}
	in, err := be.tensor(a, "convert input")
	if err != nil {
		return err
	}
	if !slices.Equal(o.shape, in.shape) {
		return fmt.Errorf("convert: input %v and out %v differ in shape", in.shape, o.shape)
	}
	n := o.Len()
	be.parallelFor(n, grainElementwise, func(lo, hi int) {
		switch {
		case in.dtype == kernels.F32 && o.dtype == kernels.F32:
			copy(o.f32[lo:hi], in.f32[lo:hi])
		case in.dtype == kernels.BF16 && o.dtype == kernels.BF16:
			copy(o.bf16[lo:hi], in.bf16[lo:hi])
		case in.dtype == kernels.F32:
			f32ToBF16(o.bf16[lo:hi], in.f32[lo:hi])
		default:
			bf16ToF32(o.f32[lo:hi], in.bf16[lo:hi])
		}
	})
	return nil
}

// AddBias adds bias[n] to every row of x[..., n] in place.
func (be *Backend) AddBias(x, bias kernels.Tensor) error {
	xt, err := be.f32Tensor(x, "addbias x")
	if err != nil {
		return err
	}
	bt, err := be.f32Tensor(bias, "addbias bias")
	if err != nil {
		return err
	}
	rows, n := lastDim(xt)
	if err := wantShape(bt, "addbias bias", n); err != nil {
		return err
	}
	be.parallelFor(rows, max(1, grainElementwise/n), func(lo, hi int) {
		for r := lo; r < hi; r++ {
			row := xt.f32[r*n : (r+1)*n]
			for j, b := range bt.f32 {
				row[j] += b
			}
		}
	})
	return nil
}

// SliceCols copies columns [col0, col0+cols) of src[rows, srcCols] into
// out[rows, cols]; rows is the product of the leading dimensions, which
// must agree.
func (be *Backend) SliceCols(out, src kernels.Tensor, col0 int) error {
	o, err := be.f32Tensor(out, "slicecols out")
	if err != nil {
		return err
	}
	s, err := be.f32Tensor(src, "slicecols src")
	if err != nil {
		return err
	}
	rows, cols := lastDim(o)
	srows, scols := lastDim(s)
	if rows != srows {
		return fmt.Errorf("slicecols: out %v has %d rows, src %v has %d", o.shape, rows, s.shape, srows)
	}
	if col0 < 0 || col0+cols > scols {
		return fmt.Errorf("slicecols: columns [%d,%d) outside src's %d", col0, col0+cols, scols)
	}
	be.parallelFor(rows, max(1, grainElementwise/cols), func(lo, hi int) {
		for r := lo; r < hi; r++ {
			copy(o.f32[r*cols:(r+1)*cols], s.f32[r*scols+col0:r*scols+col0+cols])
		}
	})
	return nil
}

// RepeatHeads writes out[rows, heads·dim] from src[rows, srcHeads·dim] with
// out head h = src head h/(heads/srcHeads). Only the element counts of out
// and src are checked against rows·heads·dim and rows·srcHeads·dim, so
// either may be shaped [.., heads, dim] or [.., heads·dim].
func (be *Backend) RepeatHeads(out, src kernels.Tensor, srcHeads, heads, dim int) error {
	o, err := be.f32Tensor(out, "repeatheads out")
	if err != nil {
		return err
	}
	s, err := be.f32Tensor(src, "repeatheads src")
	if err != nil {
		return err
	}
	if srcHeads <= 0 || heads <= 0 || dim <= 0 || heads%srcHeads != 0 {
		return fmt.Errorf("repeatheads: heads %d is not a positive multiple of srcHeads %d (dim %d)", heads, srcHeads, dim)
	}
	if o.Len()%(heads*dim) != 0 {
		return fmt.Errorf("repeatheads: out %v is not a whole number of rows of %d×%d", o.shape, heads, dim)
	}
	rows := o.Len() / (heads * dim)
	if s.Len() != rows*srcHeads*dim {
		return fmt.Errorf("repeatheads: src %v does not hold %d rows of %d×%d", s.shape, rows, srcHeads, dim)
	}
	rep := heads / srcHeads
	be.parallelFor(rows, max(1, grainElementwise/(heads*dim)), func(lo, hi int) {
		for r := lo; r < hi; r++ {
			for h := range heads {
				copy(o.f32[(r*heads+h)*dim:(r*heads+h+1)*dim], s.f32[(r*srcHeads+h/rep)*dim:(r*srcHeads+h/rep+1)*dim])
			}
		}
	})
	return nil
}
