package cuda

import (
	"fmt"
	"math"
	"runtime"
	"unsafe"

	"github.com/matsurgery/matsurgery/kernels"
)

var (
	_ kernels.RowCopier       = (*Backend)(nil)
	_ kernels.CachedAttention = (*Backend)(nil)
)

// CopyRows copies n rows of src (F32 or BF16, widened exactly) into dst
// (F32), both seen as [rows, cols]: a device-to-device copy, or a widening
// kernel for BF16. Ranges within one storage must not overlap.
func (be *Backend) CopyRows(dst kernels.Tensor, dstRow int, src kernels.Tensor, srcRow, n int) error {
	o := be.ops("copyrows")
	dt, st := o.out(dst, "dst"), o.any(src, "src")
	if o.err != nil {
		return o.err
	}
	drows, cols := lastDim(dt)
	srows, scols := lastDim(st)
	switch {
	case cols != scols:
		return fmt.Errorf("copyrows: dst %v and src %v have rows of %d and %d", dt.shape, st.shape, cols, scols)
	case dstRow < 0 || srcRow < 0 || n < 0:
		return fmt.Errorf("copyrows: negative row or count (dst row %d, src row %d, n %d)", dstRow, srcRow, n)
	case dstRow+n > drows:
		return fmt.Errorf("copyrows: rows [%d,%d) past the %d rows of dst %v", dstRow, dstRow+n, drows, dt.shape)
	case srcRow+n > srows:
		return fmt.Errorf("copyrows: rows [%d,%d) past the %d rows of src %v", srcRow, srcRow+n, srows, st.shape)
	}
	if n == 0 {
		return nil
	}
	d0 := dt.ptr + uint64(dstRow*cols*4)
	s0 := st.ptr + uint64(srcRow*cols*st.dtype.Size())
	dEnd, sEnd := d0+uint64(n*cols*4), s0+uint64(n*cols*st.dtype.Size())
	if d0 < sEnd && s0 < dEnd {
		return fmt.Errorf("copyrows: the row ranges overlap in one storage (dst rows [%d,%d), src rows [%d,%d))", dstRow, dstRow+n, srcRow, srcRow+n)
	}
	return o.run(func() error {
		if st.dtype == kernels.F32 {
			return be.drv.dtod(d0, s0, n*cols*4, be.stream)
		}
		total := int64(n * cols)
		return be.elementwise("copyrows", "k_unary", total, devPtr(d0), 0, devPtr(s0), 1, total, 0, float32(0))
	})
}

// GatherRows writes row i of out [rows, cols] from row ids[i] of table
// [vocab, cols] (F32 or BF16, widened exactly). The ids are checked on the
// host, then copied to the device with the work.
func (be *Backend) GatherRows(out, table kernels.Tensor, ids []int32) error {
	o := be.ops("gatherrows")
	ot, tt := o.out(out, "out"), o.any(table, "table")
	if o.err != nil {
		return o.err
	}
	rows, cols := lastDim(ot)
	vocab, tcols := lastDim(tt)
	if tcols != cols {
		return fmt.Errorf("gatherrows: out %v has rows of %d, table %v of %d", ot.shape, cols, tt.shape, tcols)
	}
	if len(ids) != rows {
		return fmt.Errorf("gatherrows: %d ids for the %d rows of out %v", len(ids), rows, ot.shape)
	}
	for i, id := range ids {
		if id < 0 || int(id) >= vocab {
			return fmt.Errorf("gatherrows: id %d (position %d) outside [0, %d)", id, i, vocab)
		}
	}
	return o.run(func() error {
		buf, err := be.drv.alloc(uint64(4*len(ids)), be.stream)
		if err != nil {
			return err
		}
		defer func() { _ = be.drv.free(buf, be.stream) }()
		err = be.drv.htod(buf, unsafe.Pointer(unsafe.SliceData(ids)), 4*len(ids), be.stream)
		runtime.KeepAlive(ids)
		if err != nil {
			return err
		}
		total := int64(rows * cols)
		return be.elementwise("gatherrows", "k_gather_rows", total, ot, tt, tt.bf(), devPtr(buf), total, cols)
	})
}

// SoftmaxAttentionCached attends lq new queries (positions pos0…) to the
// first pos0+lq rows of the key/value cache (rows past them are never
// read), causally, with the flash-style kernel of SoftmaxAttention; at most
// decodeSplitMaxQueries queries over at least decodeSplitMinKeys keys run
// the split-key kernels of decode_attention.go instead.
func (be *Backend) SoftmaxAttentionCached(out, q, k, v kernels.Tensor, pos0 int, scale float32) error {
	o := be.ops("softmaxattentioncached")
	s := &scan{y: o.out(out, "out"), C: o.any(q, "q"), B: o.any(k, "k"), x: o.any(v, "v")}
	var capacity int
	if o.err == nil {
		if len(s.C.shape) != 4 || len(s.B.shape) != 4 {
			o.fail("q %v and k %v must be [batch, seqlen, heads, headdim]", s.C.shape, s.B.shape)
		} else {
			s.nb, s.l, s.h, s.p = s.C.shape[0], s.C.shape[1], s.C.shape[2], s.C.shape[3]
			capacity, s.hb = s.B.shape[1], s.B.shape[2]
			o.shape(s.B, "k", s.nb, capacity, s.hb, s.p)
			o.shape(s.x, "v", s.nb, capacity, s.hb, s.p)
			o.shape(s.y, "out", s.nb, s.l, s.h, s.p)
			switch {
			case o.err != nil:
			case s.h%s.hb != 0:
				o.fail("%d heads is not a multiple of %d kv heads", s.h, s.hb)
			case pos0 < 0 || pos0+s.l > capacity:
				o.fail("positions [%d,%d) do not fit the cache of %d rows", pos0, pos0+s.l, capacity)
			case math.IsNaN(float64(scale)) || math.IsInf(float64(scale), 0):
				o.fail("scale %g is not a finite number", scale)
			case s.p > maxAttentionHead:
				o.fail("head size %d > %d is not supported", s.p, maxAttentionHead)
			}
			o.noAlias(s.y, s.C, "q")
			o.noAlias(s.y, s.B, "k")
			o.noAlias(s.y, s.x, "v")
		}
	}
	return o.run(func() error {
		if useDecodeSplit(s.l, pos0+s.l) {
			return be.decodeAttention(o.op, s, capacity, pos0, scale)
		}
		f, err := be.kernel("core", "k_softmax_attention")
		if err != nil {
			return err
		}
		return be.attention(o.op, f, s, capacity, pos0+s.l, pos0, scale, true)
	})
}
