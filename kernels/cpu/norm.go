package cpu

import (
	"fmt"
	"math"
	"slices"

	"github.com/matsurgery/matsurgery/kernels"
)

// rowOp loads out and x (same shape) for a normalisation over the last
// dimension and checks weight (and bias, when not nil) are [last].
func (be *Backend) rowOp(op string, out, x, weight, bias kernels.Tensor) (o, xt, w, b *Tensor, err error) {
	if o, err = be.f32Tensor(out, op+" out"); err != nil {
		return
	}
	if xt, err = be.f32Tensor(x, op+" x"); err != nil {
		return
	}
	if !slices.Equal(o.shape, xt.shape) {
		err = fmt.Errorf("%s: x %v and out %v differ in shape", op, xt.shape, o.shape)
		return
	}
	_, n := lastDim(xt)
	if w, err = be.f32Tensor(weight, op+" weight"); err != nil {
		return
	}
	if err = wantShape(w, op+" weight", n); err != nil {
		return
	}
	if b, err = be.optF32(bias, op+" bias"); err != nil || b == nil {
		return
	}
	err = wantShape(b, op+" bias", n)
	return
}

func checkEps(op string, eps float32) error {
	if !(eps >= 0) || math.IsInf(float64(eps), 0) {
		return fmt.Errorf("%s: eps %g, want a finite number ≥ 0", op, eps)
	}
	return nil
}

// LayerNorm writes (x−mean)/√(var+eps)·weight + bias over the last
// dimension; mean and (biased) variance are two-pass float64 sums. out may
// be x.
func (be *Backend) LayerNorm(out, x, weight, bias kernels.Tensor, eps float32) error {
	o, xt, w, b, err := be.rowOp("layernorm", out, x, weight, bias)
	if err != nil {
		return err
	}
	if err := checkEps("layernorm", eps); err != nil {
		return err
	}
	rows, n := lastDim(xt)
	be.parallelFor(rows, max(1, 4096/n), func(lo, hi int) {
		for r := lo; r < hi; r++ {
			row := xt.f32[r*n : (r+1)*n]
			var sum float64
			for _, v := range row {
				sum += float64(v)
			}
			mean := sum / float64(n)
			var ss float64
			for _, v := range row {
				d := float64(v) - mean
				ss += d * d
			}
			inv := 1 / math.Sqrt(ss/float64(n)+float64(eps))
			dst := o.f32[r*n : (r+1)*n]
			for j, v := range row {
				y := (float64(v) - mean) * inv * float64(w.f32[j])
				if b != nil {
					y += float64(b.f32[j])
				}
				dst[j] = float32(y)
			}
		}
	})
	return nil
}

// RMSNorm writes x/√(mean(x²)+eps)·weight over the last dimension. out may
// be x.
func (be *Backend) RMSNorm(out, x, weight kernels.Tensor, eps float32) error {
	o, xt, w, _, err := be.rowOp("rmsnorm", out, x, weight, nil)
	if err != nil {
		return err
	}
	if err := checkEps("rmsnorm", eps); err != nil {
		return err
	}
	_, n := lastDim(xt)
	be.gatedRMS(o.f32, xt.f32, nil, w.f32, n, n, eps)
	return nil
}

// GatedRMSNorm writes, per group of groupSize contiguous channels of the
// last dimension, g/√(mean(g²)+eps)·weight with g = y·silu(z) (norm after
// gate); z may be nil. out may be y or z.
func (be *Backend) GatedRMSNorm(out, y, z, weight kernels.Tensor, groupSize int, eps float32) error {
	o, yt, w, _, err := be.rowOp("gatedrmsnorm", out, y, weight, nil)
	if err != nil {
		return err
	}
	zt, err := be.optF32(z, "gatedrmsnorm z")
	if err != nil {
		return err
	}
	var zd []float32
	if zt != nil {
		if !slices.Equal(zt.shape, yt.shape) {
			return fmt.Errorf("gatedrmsnorm: z %v and y %v differ in shape", zt.shape, yt.shape)
		}
		zd = zt.f32
	}
	_, n := lastDim(yt)
	if groupSize <= 0 || n%groupSize != 0 {
		return fmt.Errorf("gatedrmsnorm: group size %d does not divide the last dimension %d", groupSize, n)
	}
	if err := checkEps("gatedrmsnorm", eps); err != nil {
		return err
	}
	be.gatedRMS(o.f32, yt.f32, zd, w.f32, n, groupSize, eps)
	return nil
}

// gatedRMS normalises rows of n channels in groups of size group; z nil
// means no gate. Each group is read whole before it is written, so out may
// alias y or z.
func (be *Backend) gatedRMS(out, y, z, w []float32, n, group int, eps float32) {
	rows := len(y) / n
	be.parallelFor(rows, max(1, 4096/n), func(lo, hi int) {
		g := make([]float64, group)
		for r := lo; r < hi; r++ {
			for c0 := r * n; c0 < (r+1)*n; c0 += group {
				var ss float64
				for j := range group {
					v := float64(y[c0+j])
					if z != nil {
						zv := float64(z[c0+j])
						v *= zv / (1 + math.Exp(-zv))
					}
					g[j] = v
					ss += v * v
				}
				inv := 1 / math.Sqrt(ss/float64(group)+float64(eps))
				wc := w[c0-r*n:]
				for j := range group {
					out[c0+j] = float32(g[j] * inv * float64(wc[j]))
				}
			}
		}
	})
}
