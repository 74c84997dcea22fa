package cuda

import (
	"fmt"
	"math"
	"runtime"
	"sync"
	"unsafe"
)

// The cuBLAS entry points of the training operations (strided-batched
// products), looked up in the already opened library at first use so that
// a cuBLAS without them still serves the forward operations.
var trainBLAS struct {
	once              sync.Once
	sgemmSB, gemmExSB uintptr
	err               error
}

func (c *cublasAPI) stridedBatched() (sgemm, gemmEx uintptr, err error) {
	trainBLAS.once.Do(func() {
		trainBLAS.err = c.lib.symbols(map[*uintptr][]string{
			&trainBLAS.sgemmSB:  {"cublasSgemmStridedBatched"},
			&trainBLAS.gemmExSB: {"cublasGemmStridedBatchedEx"},
		})
	})
	return trainBLAS.sgemmSB, trainBLAS.gemmExSB, trainBLAS.err
}

// gemmDefaultAlgo is CUBLAS_GEMM_DEFAULT (−1) as a 32-bit argument.
var gemmDefaultAlgo = func() uintptr { algo := int32(cublasGemmDefault); return uintptr(uint32(algo)) }()

// mat is one operand of gemmRows: a row-major matrix at ptr with ld
// elements between rows, and stride elements between the matrices of a
// batch.
type mat struct {
	ptr    uint64
	ld     int
	stride int64
}

// gemmRows computes, for batch row-major products,
// C = alpha·op(A)·op(B) + beta·C with C [m,n], op(A) [m,k] (A [k,m] when
// transA) and op(B) [k,n] (B [n,k] when transB). dtype is cudaR32F
// (sgemm: full float32, no TF32, in the handle's default math mode) or
// cudaR16BF (A and B bf16, GemmEx with float32 accumulation); C is
// float32. beta = 0 ignores C's old contents (NaN included). cuBLAS is
// column-major, where a row-major X is Xᵀ: it computes
// Cᵀ = op(B)ᵀ·op(A)ᵀ with the operands swapped.
func (c *cublasAPI) gemmRows(h uintptr, transA, transB bool, m, n, k int, alpha float32, a, b mat, beta float32, out mat, batch, dtype int) error {
	what := fmt.Sprintf("gemm m=%d n=%d k=%d transA=%v transB=%v batch=%d", m, n, k, transA, transB, batch)
	for _, v := range []int{m, n, k, a.ld, b.ld, out.ld, batch} {
		if v <= 0 || v > math.MaxInt32 {
			return fmt.Errorf("cuBLAS %s: a size or leading dimension (%d) outside 1 … 2³¹−1", what, v)
		}
	}
	opA, opB := uintptr(cublasOpN), uintptr(cublasOpN)
	if transA {
		opA = cublasOpT
	}
	if transB {
		opB = cublasOpT
	}
	scalars := new([2]float32) // alpha, beta: read by cuBLAS during the call
	scalars[0], scalars[1] = alpha, beta
	defer runtime.KeepAlive(scalars)
	pAlpha, pBeta := uintptr(unsafe.Pointer(&scalars[0])), uintptr(unsafe.Pointer(&scalars[1]))
	if batch == 1 {
		if dtype == cudaR32F {
			return c.check(call(c.sgemm, h, opB, opA, uintptr(n), uintptr(m), uintptr(k),
				pAlpha, uintptr(b.ptr), uintptr(b.ld), uintptr(a.ptr), uintptr(a.ld),
				pBeta, uintptr(out.ptr), uintptr(out.ld)), "cublasSgemm "+what)
		}
		return c.check(call(c.gemmEx, h, opB, opA, uintptr(n), uintptr(m), uintptr(k),
			pAlpha, uintptr(b.ptr), uintptr(dtype), uintptr(b.ld), uintptr(a.ptr), uintptr(dtype), uintptr(a.ld),
			pBeta, uintptr(out.ptr), cudaR32F, uintptr(out.ld), cublasCompute32F, gemmDefaultAlgo), "cublasGemmEx "+what)
	}
	sgemmSB, gemmExSB, err := c.stridedBatched()
	if err != nil {
		return fmt.Errorf("cuBLAS %s: %w", what, err)
	}
	if dtype == cudaR32F {
		return c.check(call(sgemmSB, h, opB, opA, uintptr(n), uintptr(m), uintptr(k),
			pAlpha, uintptr(b.ptr), uintptr(b.ld), uintptr(b.stride), uintptr(a.ptr), uintptr(a.ld), uintptr(a.stride),
			pBeta, uintptr(out.ptr), uintptr(out.ld), uintptr(out.stride), uintptr(batch)), "cublasSgemmStridedBatched "+what)
	}
	return c.check(call(gemmExSB, h, opB, opA, uintptr(n), uintptr(m), uintptr(k),
		pAlpha, uintptr(b.ptr), uintptr(dtype), uintptr(b.ld), uintptr(b.stride), uintptr(a.ptr), uintptr(dtype), uintptr(a.ld), uintptr(a.stride),
		pBeta, uintptr(out.ptr), cudaR32F, uintptr(out.ld), uintptr(out.stride), uintptr(batch),
		cublasCompute32F, gemmDefaultAlgo), "cublasGemmStridedBatchedEx "+what)
}
