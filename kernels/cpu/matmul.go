package cpu

import (
	"fmt"

	"github.com/matsurgery/matsurgery/kernels"
)

// matmulPanelMax bounds the output columns of one task of a BF16-weight
// MatMul: b is widened to float32 one panel at a time (at most
// matmulPanelMax·k floats per worker), so a checkpoint's weights never
// exist as float32 all at once. Panels are large because each one repacks
// all of a.
const matmulPanelMax = 1024

// MatMul computes out[m,n] = a[m,k]·bᵀ (transB: b is [n,k]) or a·b (b is
// [k,n]); a and b may each be F32 or BF16, accumulation is float32. The
// leading dimensions of a and of out are flattened into m. With transB
// and at most skinnyMaxRows rows the weight is streamed without packing
// (skinny.go).
func (be *Backend) MatMul(out, a, b kernels.Tensor, transB bool) error {
	o, err := be.f32Tensor(out, "matmul out")
	if err != nil {
		return err
	}
	at, err := be.tensor(a, "matmul a")
	if err != nil {
		return err
	}
	bt, err := be.tensor(b, "matmul b")
	if err != nil {
		return err
	}
	m, k := lastDim(at)
	if len(bt.shape) != 2 {
		return fmt.Errorf("matmul: b must be 2-D, got %v", bt.shape)
	}
	var n int
	if transB {
		if bt.shape[1] != k {
			return fmt.Errorf("matmul: a %v · bᵀ with b %v: inner dimensions %d and %d differ", at.shape, bt.shape, k, bt.shape[1])
		}
		n = bt.shape[0]
	} else {
		if bt.shape[0] != k {
			return fmt.Errorf("matmul: a %v · b %v: inner dimensions %d and %d differ", at.shape, bt.shape, k, bt.shape[0])
		}
		n = bt.shape[1]
	}
	om, on := lastDim(o)
	if om != m || on != n {
		return fmt.Errorf("matmul: out %v, want %d rows of %d (a %v, b %v, transB %v)", o.shape, m, n, at.shape, bt.shape, transB)
	}

	af := at.f32
	if at.dtype == kernels.BF16 {
		af = make([]float32, m*k)
		be.parallelFor(len(af), 1<<16, func(lo, hi int) { bf16ToF32(af[lo:hi], at.bf16[lo:hi]) })
	}
	if transB && m <= skinnyMaxRows {
		be.matmulSkinny(m, n, k, af, bt, o.f32)
		return nil
	}
	if bt.dtype == kernels.F32 {
		be.gemmParallel(transB, m, n, k, af, bt.f32, o.f32)
		return nil
	}

	// BF16 b: tasks of matmulPanel output columns, each widening its panel
	// of b into per-worker scratch.
	// Equal panels, a multiple of the workers in number, each a multiple
	// of 16 columns and at most matmulPanelMax wide.
	rounds := (n + be.workers*matmulPanelMax - 1) / (be.workers * matmulPanelMax)
	panel := (n + rounds*be.workers - 1) / (rounds * be.workers)
	panel = min(matmulPanelMax, (panel+15)/16*16)
	panels := (n + panel - 1) / panel
	scratch := make([][]float32, be.workerCount(panels))
	be.parallelTasks(panels, func(w, p int) {
		j0 := p * panel
		nc := min(panel, n-j0)
		if scratch[w] == nil {
			scratch[w] = make([]float32, panel*k)
		}
		bp := scratch[w][:nc*k]
		if transB {
			bf16ToF32(bp, bt.bf16[j0*k:(j0+nc)*k]) // rows j0.. of [n,k]: [nc,k]
			gemm(false, true, m, nc, k, af, k, bp, k, 0, o.f32[j0:], n)
		} else {
			for r := range k { // columns j0.. of [k,n]: [k,nc]
				bf16ToF32(bp[r*nc:(r+1)*nc], bt.bf16[r*n+j0:r*n+j0+nc])
			}
			gemm(false, false, m, nc, k, af, k, bp, nc, 0, o.f32[j0:], n)
		}
	})
	return nil
}

// gemmParallel computes c[m,n] = a[m,k]·op(b) with f32 operands, splitting
// the rows of c over the workers when the kernel is serial.
func (be *Backend) gemmParallel(transB bool, m, n, k int, a, b, c []float32) {
	ldb := n
	if transB {
		ldb = k
	}
	// gonum's sgemm parallelises by output blocks itself; splitting rows
	// here as well keeps both kernels busy on every core.
	rowsPer := max(64, (m+be.workers-1)/be.workers)
	tasks := (m + rowsPer - 1) / rowsPer
	be.parallelTasks(tasks, func(_, t int) {
		i0 := t * rowsPer
		mr := min(rowsPer, m-i0)
		gemm(false, transB, mr, n, k, a[i0*k:], k, b, ldb, 0, c[i0*n:], n)
	})
}
