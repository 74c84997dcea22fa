package cpu

import (
	"fmt"
	"math"

	"github.com/matsurgery/matsurgery/kernels"
)

var (
	_ kernels.RowCopier       = (*Backend)(nil)
	_ kernels.CachedAttention = (*Backend)(nil)
)

// CopyRows copies rows srcRow … srcRow+n−1 of src into rows dstRow … of
// dst, both seen as [rows, cols] matrices; a BF16 src is widened exactly.
func (be *Backend) CopyRows(dst kernels.Tensor, dstRow int, src kernels.Tensor, srcRow, n int) error {
	d, err := be.f32Tensor(dst, "copyrows dst")
	if err != nil {
		return err
	}
	s, err := be.tensor(src, "copyrows src")
	if err != nil {
		return err
	}
	drows, cols := lastDim(d)
	srows, scols := lastDim(s)
	if cols != scols {
		return fmt.Errorf("copyrows: dst %v has rows of %d, src %v rows of %d", d.shape, cols, s.shape, scols)
	}
	if n < 0 || dstRow < 0 || srcRow < 0 || dstRow+n > drows || srcRow+n > srows {
		return fmt.Errorf("copyrows: %d rows from row %d of src (%d rows) to row %d of dst (%d rows): out of range", n, srcRow, srows, dstRow, drows)
	}
	if n == 0 {
		return nil
	}
	if s.dtype == kernels.F32 && &s.f32[0] == &d.f32[0] && dstRow < srcRow+n && srcRow < dstRow+n {
		return fmt.Errorf("copyrows: rows [%d,%d) and [%d,%d) of the same tensor overlap", srcRow, srcRow+n, dstRow, dstRow+n)
	}
	out := d.f32[dstRow*cols : (dstRow+n)*cols]
	be.parallelFor(len(out), grainElementwise, func(lo, hi int) {
		if s.dtype == kernels.BF16 {
			bf16ToF32(out[lo:hi], s.bf16[srcRow*cols+lo:srcRow*cols+hi])
		} else {
			copy(out[lo:hi], s.f32[srcRow*cols+lo:srcRow*cols+hi])
		}
	})
	return nil
}

// GatherRows writes out row i from table row ids[i].
func (be *Backend) GatherRows(out, table kernels.Tensor, ids []int32) error {
	o, err := be.f32Tensor(out, "gatherrows out")
	if err != nil {
		return err
	}
	t, err := be.tensor(table, "gatherrows table")
	if err != nil {
		return err
	}
	rows, cols := lastDim(o)
	if len(t.shape) != 2 || t.shape[1] != cols {
		return fmt.Errorf("gatherrows: table %v must be [vocab, %d] for out %v", t.shape, cols, o.shape)
	}
	if len(ids) != rows {
		return fmt.Errorf("gatherrows: %d ids for the %d rows of out %v", len(ids), rows, o.shape)
	}
	vocab := t.shape[0]
	for i, id := range ids {
		if id < 0 || int(id) >= vocab {
			return fmt.Errorf("gatherrows: id %d (row %d) outside [0, %d)", id, i, vocab)
		}
	}
	be.parallelFor(rows, max(1, grainElementwise/cols), func(lo, hi int) {
		for r := lo; r < hi; r++ {
			dst := o.f32[r*cols : (r+1)*cols]
			src := int(ids[r]) * cols
			if t.dtype == kernels.BF16 {
				bf16ToF32(dst, t.bf16[src:src+cols])
			} else {
				copy(dst, t.f32[src:src+cols])
			}
		}
	})
	return nil
}

// SoftmaxAttentionCached attends the lq queries of positions pos0 … to the
// first pos0+lq rows of the key/value cache, causally. Scores are float32
// dot products, the softmax and the weighted sum of values run in float64,
// per (batch, head, query) task.
func (be *Backend) SoftmaxAttentionCached(out, q, k, v kernels.Tensor, pos0 int, scale float32) error {
	const op = "softmaxattentioncached"
	o, err := be.f32Tensor(out, op+" out")
	if err != nil {
		return err
	}
	qt, err := be.f32Tensor(q, op+" q")
	if err != nil {
		return err
	}
	kt, err := be.f32Tensor(k, op+" k")
	if err != nil {
		return err
	}
	vt, err := be.f32Tensor(v, op+" v")
	if err != nil {
		return err
	}
	if len(qt.shape) != 4 || len(kt.shape) != 4 {
		return fmt.Errorf("%s: q %v and k %v must be [batch, seqlen, heads, headdim]", op, qt.shape, kt.shape)
	}
	nb, lq, H, p := qt.shape[0], qt.shape[1], qt.shape[2], qt.shape[3]
	capacity, Hkv := kt.shape[1], kt.shape[2]
	if err := wantShape(kt, op+" k", nb, capacity, Hkv, p); err != nil {
		return err
	}
	if err := wantShape(vt, op+" v", nb, capacity, Hkv, p); err != nil {
		return err
	}
	if err := wantShape(o, op+" out", nb, lq, H, p); err != nil {
		return err
	}
	if H%Hkv != 0 {
		return fmt.Errorf("%s: %d heads is not a multiple of %d kv heads", op, H, Hkv)
	}
	if pos0 < 0 || pos0+lq > capacity {
		return fmt.Errorf("%s: %d queries from position %d need %d cached rows, the cache holds %d", op, lq, pos0, pos0+lq, capacity)
	}
	if math.IsNaN(float64(scale)) || math.IsInf(float64(scale), 0) {
		return fmt.Errorf("%s: scale %g is not finite", op, scale)
	}
	for _, in := range []*Tensor{qt, kt, vt} {
		if &in.f32[0] == &o.f32[0] {
			return fmt.Errorf("%s: out must not alias an input", op)
		}
	}
	rep := H / Hkv
	nk := pos0 + lq
	scratch := make([][]float64, be.workerCount(nb*H*lq))
	be.parallelTasks(nb*H*lq, func(w, task int) {
		b, h, i := task/(H*lq), task/lq%H, task%lq
		hk := h / rep
		if scratch[w] == nil {
			scratch[w] = make([]float64, nk+p)
		}
		vis := pos0 + i + 1
		sc, acc := scratch[w][:vis], scratch[w][nk:nk+p]
		qr := qt.f32[((b*lq+i)*H+h)*p:][:p]
		m := math.Inf(-1)
		for s := range vis {
			kr := kt.f32[((b*capacity+s)*Hkv+hk)*p:][:p]
			var dot float32
			for j, x := range qr {
				dot += x * kr[j]
			}
			sc[s] = float64(scale) * float64(dot)
			m = max(m, sc[s])
		}
		var sum float64
		for s, x := range sc {
			e := math.Exp(x - m)
			sc[s] = e
			sum += e
		}
		clear(acc)
		for s, e := range sc {
			vr := vt.f32[((b*capacity+s)*Hkv+hk)*p:][:p]
			for j, x := range vr {
				acc[j] += e * float64(x)
			}
		}
		or := o.f32[((b*lq+i)*H+h)*p:][:p]
		inv := 1 / sum
		for j, a := range acc {
			or[j] = float32(a * inv)
		}
	})
	return nil
}
