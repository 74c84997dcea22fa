package cpu

import (
	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"
)

// gemmFunc computes C = op(A)·op(B) + beta·C for row-major matrices, op(A)
// [m×k], op(B) [k×n], C [m×n] with leading dimensions lda, ldb, ldc. beta is
// 0 (C is overwritten, never read) or 1 (accumulate).
type gemmFunc func(transA, transB bool, m, n, k int, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int)

// gemm is the float32 matrix product every operation uses. Benchmarks
// (BenchmarkGemm in gemm_test.go) pick gonum's sgemm over gemmBlocked on
// amd64: gonum's inner loops are SSE assembly, ours are plain Go.
var gemm gemmFunc = gemmGonum

func transpose(t bool) blas.Transpose {
	if t {
		return blas.Trans
	}
	return blas.NoTrans
}

// gemmGonum calls gonum's native sgemm. It splits large products over
// GOMAXPROCS goroutines by output blocks and runs the k dimension in a
// fixed order, so its result does not depend on scheduling.
func gemmGonum(transA, transB bool, m, n, k int, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if m == 0 || n == 0 {
		return
	}
	if k == 0 {
		scaleRows(m, n, beta, c, ldc)
		return
	}
	blas32.Implementation().Sgemm(transpose(transA), transpose(transB), m, n, k, 1, a, lda, b, ldb, beta, c, ldc)
}

func scaleRows(m, n int, beta float32, c []float32, ldc int) {
	for i := range m {
		row := c[i*ldc : i*ldc+n]
		if beta == 0 {
			clear(row)
			continue
		}
		for j := range row {
			row[j] *= beta
		}
	}
}

// Blocking of gemmBlocked: kc×nc panels of B and mc×kc panels of A are
// packed into strips of gemmNR columns / gemmMR rows for the register
// micro-kernel.
const (
	gemmMR = 4
	gemmNR = 4
	gemmKC = 256
	gemmMC = 64
	gemmNC = 512
)

// gemmBlocked is a cache-blocked, packed matrix product in plain Go with a
// 4×4 register micro-kernel (serial). It is kept as the portable
// alternative measured against gonum in BenchmarkGemm.
func gemmBlocked(transA, transB bool, m, n, k int, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if m == 0 || n == 0 {
		return
	}
	if k == 0 {
		scaleRows(m, n, beta, c, ldc)
		return
	}
	bp := make([]float32, gemmKC*(gemmNC+gemmNR))
	ap := make([]float32, gemmKC*(gemmMC+gemmMR))
	for j0 := 0; j0 < n; j0 += gemmNC {
		nc := min(gemmNC, n-j0)
		for p0 := 0; p0 < k; p0 += gemmKC {
			kc := min(gemmKC, k-p0)
			packB(transB, b, ldb, p0, j0, kc, nc, bp)
			bt := beta
			if p0 > 0 {
				bt = 1
			}
			for i0 := 0; i0 < m; i0 += gemmMC {
				mc := min(gemmMC, m-i0)
				packA(transA, a, lda, i0, p0, mc, kc, ap)
				for jr := 0; jr < nc; jr += gemmNR {
					nr := min(gemmNR, nc-jr)
					bs := bp[jr*kc : jr*kc+gemmNR*kc]
					for ir := 0; ir < mc; ir += gemmMR {
						mr := min(gemmMR, mc-ir)
						as := ap[ir*kc : ir*kc+gemmMR*kc]
						micro4x4(kc, as, bs, c[(i0+ir)*ldc+j0+jr:], ldc, mr, nr, bt)
					}
				}
			}
		}
	}
}

// packB copies op(B)[p0:p0+kc, j0:j0+nc] into strips of gemmNR columns,
// each strip k-major (gemmNR values per k), zero-padding the last strip.
func packB(transB bool, b []float32, ldb, p0, j0, kc, nc int, dst []float32) {
	for jr := 0; jr < nc; jr += gemmNR {
		strip := dst[jr*kc : jr*kc+gemmNR*kc]
		for j := range gemmNR {
			col := j0 + jr + j
			if jr+j >= nc {
				for p := range kc {
					strip[p*gemmNR+j] = 0
				}
				continue
			}
			if transB {
				row := b[col*ldb+p0 : col*ldb+p0+kc]
				for p, v := range row {
					strip[p*gemmNR+j] = v
				}
			} else {
				for p := range kc {
					strip[p*gemmNR+j] = b[(p0+p)*ldb+col]
				}
			}
		}
	}
}

// packA copies op(A)[i0:i0+mc, p0:p0+kc] into strips of gemmMR rows, each
// strip k-major, zero-padding the last strip.
func packA(transA bool, a []float32, lda, i0, p0, mc, kc int, dst []float32) {
	for ir := 0; ir < mc; ir += gemmMR {
		strip := dst[ir*kc : ir*kc+gemmMR*kc]
		for i := range gemmMR {
			row := i0 + ir + i
			if ir+i >= mc {
				for p := range kc {
					strip[p*gemmMR+i] = 0
				}
				continue
			}
			if transA {
				for p := range kc {
					strip[p*gemmMR+i] = a[(p0+p)*lda+row]
				}
			} else {
				src := a[row*lda+p0 : row*lda+p0+kc]
				for p, v := range src {
					strip[p*gemmMR+i] = v
				}
			}
		}
	}
}

// micro4x4 computes the mr×nr corner of a 4×4 tile of C from packed strips.
func micro4x4(kc int, as, bs []float32, c []float32, ldc, mr, nr int, beta float32) {
	var c00, c01, c02, c03, c10, c11, c12, c13 float32
	var c20, c21, c22, c23, c30, c31, c32, c33 float32
	as = as[:4*kc]
	bs = bs[:4*kc]
	for len(as) >= 4 && len(bs) >= 4 {
		a0, a1, a2, a3 := as[0], as[1], as[2], as[3]
		b0, b1, b2, b3 := bs[0], bs[1], bs[2], bs[3]
		c00 += a0 * b0
		c01 += a0 * b1
		c02 += a0 * b2
		c03 += a0 * b3
		c10 += a1 * b0
		c11 += a1 * b1
		c12 += a1 * b2
		c13 += a1 * b3
		c20 += a2 * b0
		c21 += a2 * b1
		c22 += a2 * b2
		c23 += a2 * b3
		c30 += a3 * b0
		c31 += a3 * b1
		c32 += a3 * b2
		c33 += a3 * b3
		as, bs = as[4:], bs[4:]
	}
	tile := [4][4]float32{
		{c00, c01, c02, c03},
		{c10, c11, c12, c13},
		{c20, c21, c22, c23},
		{c30, c31, c32, c33},
	}
	for i := range mr {
		row := c[i*ldc : i*ldc+nr]
		for j := range row {
			if beta == 0 {
				row[j] = tile[i][j]
			} else {
				row[j] += tile[i][j]
			}
		}
	}
}
