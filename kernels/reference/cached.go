package reference

import (
	"fmt"
	"math"
)

// References of the optional Backend extensions (kernels/cached.go).

// CopyRows returns a copy of dst with rows dstRow … dstRow+n−1 (leading
// dimensions flattened) replaced by rows srcRow … of src.
func CopyRows(dst *Array, dstRow int, src *Array, srcRow, n int) (*Array, error) {
	drows, cols, err := lastDim(dst, "copyrows dst")
	if err != nil {
		return nil, err
	}
	srows, scols, err := lastDim(src, "copyrows src")
	if err != nil {
		return nil, err
	}
	if cols != scols {
		return nil, fmt.Errorf("copyrows: rows of %d and %d", cols, scols)
	}
	if n < 0 || dstRow < 0 || srcRow < 0 || dstRow+n > drows || srcRow+n > srows {
		return nil, fmt.Errorf("copyrows: %d rows from %d (of %d) to %d (of %d) out of range", n, srcRow, srows, dstRow, drows)
	}
	out := dst.Clone()
	copy(out.Data[dstRow*cols:(dstRow+n)*cols], src.Data[srcRow*cols:(srcRow+n)*cols])
	return out, nil
}

// GatherRows returns [len(ids), cols] with row i = table row ids[i].
func GatherRows(table *Array, ids []int32) (*Array, error) {
	if table == nil || len(table.Shape) != 2 {
		return nil, fmt.Errorf("gatherrows: table must be [vocab, cols], got %v", shapeOf(table))
	}
	vocab, cols := table.Shape[0], table.Shape[1]
	out := New(len(ids), cols)
	for i, id := range ids {
		if id < 0 || int(id) >= vocab {
			return nil, fmt.Errorf("gatherrows: id %d outside [0, %d)", id, vocab)
		}
		copy(out.Data[i*cols:(i+1)*cols], table.Data[int(id)*cols:(int(id)+1)*cols])
	}
	return out, nil
}

// SoftmaxAttentionCached returns the causal softmax attention of the lq
// queries q [b, lq, H, p] of positions pos0 … pos0+lq−1 over the first
// pos0+lq rows of k and v [b, capacity, Hkv, p].
func SoftmaxAttentionCached(q, k, v *Array, pos0 int, scale float64) (*Array, error) {
	if q == nil || k == nil || len(q.Shape) != 4 || len(k.Shape) != 4 {
		return nil, fmt.Errorf("attention cached: q %v and k %v must be 4-D", shapeOf(q), shapeOf(k))
	}
	nb, lq, H, p := q.Shape[0], q.Shape[1], q.Shape[2], q.Shape[3]
	capacity, Hkv := k.Shape[1], k.Shape[2]
	if err := want(k, "attention cached k", nb, capacity, Hkv, p); err != nil {
		return nil, err
	}
	if err := want(v, "attention cached v", nb, capacity, Hkv, p); err != nil {
		return nil, err
	}
	if Hkv == 0 || H%Hkv != 0 {
		return nil, fmt.Errorf("attention cached: %d heads not a multiple of %d kv heads", H, Hkv)
	}
	if pos0 < 0 || pos0+lq > capacity {
		return nil, fmt.Errorf("attention cached: %d queries from %d exceed the %d cached rows", lq, pos0, capacity)
	}
	rep := H / Hkv
	out := New(nb, lq, H, p)
	scores := make([]float64, pos0+lq)
	for b := range nb {
		for h := range H {
			hk := h / rep
			for i := range lq {
				vis := pos0 + i + 1
				m := math.Inf(-1)
				for s := range vis {
					var dot float64
					for j := range p {
						dot += q.Data[((b*lq+i)*H+h)*p+j] * k.Data[((b*capacity+s)*Hkv+hk)*p+j]
					}
					scores[s] = scale * dot
					m = max(m, scores[s])
				}
				var sum float64
				for s := range vis {
					scores[s] = math.Exp(scores[s] - m)
					sum += scores[s]
				}
				o := out.Data[((b*lq+i)*H+h)*p:][:p]
				for s := range vis {
					w := scores[s] / sum
					for j := range p {
						o[j] += w * v.Data[((b*capacity+s)*Hkv+hk)*p+j]
					}
				}
			}
		}
	}
	return out, nil
}
