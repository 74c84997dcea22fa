package model

import (
	"fmt"

	"github.com/matsurgery/matsurgery/kernels"
)

// rowMover copies and gathers rows through the backend's kernels.RowCopier
// when it has one. Otherwise it falls back to the host: a copy downloads
// both tensors, patches the rows and writes the result back with an exact
// Scale by 1 (O(size of dst) per call), and a gather reads the embedding
// table kept on the host at load (table).
type rowMover struct {
	be     kernels.Backend
	native kernels.RowCopier
	table  []float32 // [vocab·cols] host embeddings, fallback only
}

// copy writes rows srcRow … srcRow+n−1 of src into rows dstRow … of dst,
// both seen as [rows, cols] matrices.
func (r *rowMover) copy(dst kernels.Tensor, dstRow int, src kernels.Tensor, srcRow, n int) error {
	if r.native != nil {
		return r.native.CopyRows(dst, dstRow, src, srcRow, n)
	}
	drows, cols := rowsCols(dst)
	srows, scols := rowsCols(src)
	if cols != scols || n < 0 || dstRow < 0 || srcRow < 0 || dstRow+n > drows || srcRow+n > srows {
		return fmt.Errorf("copy rows: %d rows from row %d of %v to row %d of %v: out of range or widths differ",
			n, srcRow, src.Shape(), dstRow, dst.Shape())
	}
	if n == 0 {
		return nil
	}
	d, err := r.be.Download(dst)
	if err != nil {
		return fmt.Errorf("copy rows: %w", err)
	}
	s, err := r.be.Download(src)
	if err != nil {
		return fmt.Errorf("copy rows: %w", err)
	}
	copy(d[dstRow*cols:(dstRow+n)*cols], s[srcRow*cols:(srcRow+n)*cols])
	return r.overwrite(dst, d)
}

// gather writes row i of out from row ids[i] of table.
func (r *rowMover) gather(out, table kernels.Tensor, ids []int32) error {
	if r.native != nil {
		return r.native.GatherRows(out, table, ids)
	}
	rows, cols := rowsCols(out)
	ts := table.Shape()
	if len(ts) != 2 || ts[1] != cols || len(ids) != rows || len(r.table) != ts[0]*cols {
		return fmt.Errorf("gather rows: %d ids into %v from table %v", len(ids), out.Shape(), ts)
	}
	host := make([]float32, rows*cols)
	for i, id := range ids {
		if id < 0 || int(id) >= ts[0] {
			return fmt.Errorf("gather rows: id %d outside [0, %d)", id, ts[0])
		}
		copy(host[i*cols:(i+1)*cols], r.table[int(id)*cols:(int(id)+1)*cols])
	}
	return r.overwrite(out, host)
}

// overwrite replaces dst's contents with host through a temporary tensor.
func (r *rowMover) overwrite(dst kernels.Tensor, host []float32) error {
	tmp, err := r.be.Upload(host, kernels.F32, dst.Shape()...)
	if err != nil {
		return fmt.Errorf("copy rows: %w", err)
	}
	defer r.be.Free(tmp)
	if err := r.be.Scale(dst, tmp, 1); err != nil {
		return fmt.Errorf("copy rows: %w", err)
	}
	return nil
}

// rowsCols splits t's shape into (rows, last dim).
func rowsCols(t kernels.Tensor) (rows, cols int) {
	s := t.Shape()
	if len(s) == 0 || s[len(s)-1] == 0 {
		return 0, 0
	}
	cols = s[len(s)-1]
	return t.Len() / cols, cols
}
