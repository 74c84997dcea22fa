package cuda

import (
	"fmt"
	"unsafe"

	"github.com/ebitengine/purego"
)

// cublasAPI holds the cuBLAS functions used by MatMul.
type cublasAPI struct {
	lib, lt                                  *library
	create, destroy, setStream               uintptr
	setMathMode, sgemm, gemmEx, statusString uintptr
	getProperty                              uintptr
}

// cuBLAS enums (cublas_api.h, library_types.h).
const (
	cublasOpN         = 0
	cublasOpT         = 1
	cublasDefaultMath = 0
	cudaR32F          = 0
	cudaR16BF         = 14
	cublasCompute32F  = 68
	cublasGemmDefault = -1
)

func loadCUBLAS() (*cublasAPI, error) {
	// cuBLAS needs cuBLASLt; opening it first (RTLD_GLOBAL) from the same
	// place lets cuBLAS find it even in a folder the loader does not search.
	lt, err := openLibrary(specCUBLASL)
	if err != nil {
		return nil, err
	}
	lib, err := openLibrary(specCUBLAS)
	if err != nil {
		return nil, err
	}
	c := &cublasAPI{lib: lib, lt: lt}
	err = lib.symbols(map[*uintptr][]string{
		&c.create:      {"cublasCreate_v2"},
		&c.destroy:     {"cublasDestroy_v2"},
		&c.setStream:   {"cublasSetStream_v2"},
		&c.setMathMode: {"cublasSetMathMode"},
		&c.sgemm:       {"cublasSgemm_v2"},
		&c.gemmEx:      {"cublasGemmEx"},
	})
	if err != nil {
		return nil, err
	}
	c.statusString, _ = lib.sym("cublasGetStatusString")
	c.getProperty, _ = lib.sym("cublasGetProperty")
	return c, nil
}

func (c *cublasAPI) check(res int32, what string) error {
	if res == 0 {
		return nil
	}
	e := &Error{Call: what, Code: int(res), Name: cublasStatusName(int(res))}
	if c.statusString != 0 {
		if p, _, _ := purego.SyscallN(c.statusString, uintptr(res)); p != 0 {
			e.Msg = cString(p)
		}
	}
	return e
}

func cublasStatusName(s int) string {
	switch s {
	case 1:
		return "CUBLAS_STATUS_NOT_INITIALIZED"
	case 3:
		return "CUBLAS_STATUS_ALLOC_FAILED"
	case 7:
		return "CUBLAS_STATUS_INVALID_VALUE"
	case 8:
		return "CUBLAS_STATUS_ARCH_MISMATCH"
	case 11:
		return "CUBLAS_STATUS_MAPPING_ERROR"
	case 13:
		return "CUBLAS_STATUS_EXECUTION_FAILED"
	case 14:
		return "CUBLAS_STATUS_INTERNAL_ERROR"
	case 15:
		return "CUBLAS_STATUS_NOT_SUPPORTED"
	case 16:
		return "CUBLAS_STATUS_LICENSE_ERROR"
	}
	return fmt.Sprintf("cublas status %d", s)
}

// newHandle creates a cuBLAS handle bound to stream s, in default
// (full float32, no TF32) math mode.
func (c *cublasAPI) newHandle(s uintptr) (uintptr, error) {
	var h uintptr
	if err := c.check(call(c.create, uintptr(unsafe.Pointer(&h))), "cublasCreate"); err != nil {
		return 0, err
	}
	if err := c.check(call(c.setStream, h, s), "cublasSetStream"); err != nil {
		call(c.destroy, h)
		return 0, err
	}
	if err := c.check(call(c.setMathMode, h, cublasDefaultMath), "cublasSetMathMode"); err != nil {
		call(c.destroy, h)
		return 0, err
	}
	return h, nil
}

// gemmRowMajor computes, for row-major matrices, out[m,n] = a[m,k]·op(b)
// with op(b) = bᵀ for b [n,k] (transB) or b for b [k,n]. cuBLAS is
// column-major: a row-major X is the column-major Xᵀ, so it computes
// outᵀ = op(b)ᵀ·aᵀ with the operands swapped. aType and bType are both
// cudaR32F (sgemm) or both cudaR16BF (GemmEx, float32 accumulation);
// out is float32.
func (c *cublasAPI) gemmRowMajor(h uintptr, m, n, k int, a uint64, b uint64, transB bool, out uint64, dtype int) error {
	opB, ldb := uintptr(cublasOpN), n
	if transB {
		opB, ldb = cublasOpT, k
	}
	alpha, beta := new(float32), new(float32)
	*alpha = 1
	what := fmt.Sprintf("gemm m=%d n=%d k=%d transB=%v", m, n, k, transB)
	if dtype == cudaR32F {
		return c.check(call(c.sgemm, h, opB, cublasOpN, uintptr(n), uintptr(m), uintptr(k),
			uintptr(unsafe.Pointer(alpha)), uintptr(b), uintptr(ldb), uintptr(a), uintptr(k),
			uintptr(unsafe.Pointer(beta)), uintptr(out), uintptr(n)), "cublasSgemm "+what)
	}
	algo := int32(cublasGemmDefault)
	return c.check(call(c.gemmEx, h, opB, cublasOpN, uintptr(n), uintptr(m), uintptr(k),
		uintptr(unsafe.Pointer(alpha)), uintptr(b), uintptr(dtype), uintptr(ldb), uintptr(a), uintptr(dtype), uintptr(k),
		uintptr(unsafe.Pointer(beta)), uintptr(out), cudaR32F, uintptr(n), cublasCompute32F, uintptr(uint32(algo))), "cublasGemmEx "+what)
}
