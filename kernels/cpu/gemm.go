package cpu

import (
	"sync"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"
)

// gemmFunc computes C = op(A)·op(B) + beta·C for row-major matrices, op(A)
// [m×k], op(B) [k×n], C [m×n] with leading dimensions lda, ldb, ldc. beta is
// 0 (C is overwritten, never read) or 1 (accumulate).
type gemmFunc func(transA, transB bool, m, n, k int, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int)

// gemm is the float32 matrix product every operation uses: gemmBlocked
// with an assembly micro-kernel when the CPU has AVX-512 or AVX2+FMA
// (gemm_amd64.go), gonum's sgemm otherwise. BenchmarkGemm measures the
// candidates at 1024×2560×2560 on one core: on the 2-core CI machine the
// AVX-512 kernel ran ≈ 70 GFLOP/s per core, AVX2 ≈ 42, gonum 6-7 and
// gemmBlocked with the plain-Go micro-kernel ≈ 1.2 (Go does not vectorise).
var gemm gemmFunc = gemmGonum

// microKernel computes a full gemmMR×gemmNR tile of op(A)·op(B) from
// packed strips (see packA, packB) and writes it to c (row stride ldc),
// adding to what c holds when accumulate; replaced by an assembly kernel
// where the CPU has one.
var microKernel func(kc int, a, b, c []float32, ldc int, accumulate bool) = microKernelGo

// microKernelName names the micro-kernel in use (for benchmarks and logs).
var microKernelName = "go"

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
// micro-kernel (packed B ≈ 1 MiB for L2, a strip of B 16 KiB for L1).
const (
	gemmMR = 12
	gemmNR = 32
	gemmKC = 256
	gemmMC = 96
	gemmNC = 1024
)

// gemmBlocked is a cache-blocked, packed matrix product (serial): the
// classic five loops around a register micro-kernel. Each element of C is
// summed over k in order within a kc block, in float32, and the blocks are
// added in order: the result does not depend on how the rows or columns
// of C are split among callers.
func gemmBlocked(transA, transB bool, m, n, k int, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if m == 0 || n == 0 {
		return
	}
	if k == 0 {
		scaleRows(m, n, beta, c, ldc)
		return
	}
	ws := gemmPool.Get().(*gemmWorkspace)
	defer gemmPool.Put(ws)
	bp, ap, tile := ws.b[:], ws.a[:], ws.tile[:]
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
						dst := c[(i0+ir)*ldc+j0+jr:]
						if mr == gemmMR && nr == gemmNR {
							microKernel(kc, as, bs, dst, ldc, bt != 0)
							continue
						}
						// Edge tile: compute the whole tile aside, store its corner.
						microKernel(kc, as, bs, tile, gemmNR, false)
						storeTile(tile, dst, ldc, mr, nr, bt)
					}
				}
			}
		}
	}
}

// roundUp rounds n up to a multiple of m.
func roundUp(n, m int) int { return (n + m - 1) / m * m }

// tileProduct computes the mr×nr corner of one tile, C (+)= A-strip ·
// B-strip over kc, with the micro-kernel; edge tiles go through tile.
func tileProduct(kc int, as, bs, c []float32, ldc, mr, nr int, accumulate bool, tile []float32) {
	if mr == gemmMR && nr == gemmNR {
		microKernel(kc, as, bs, c, ldc, accumulate)
		return
	}
	microKernel(kc, as, bs, tile, gemmNR, false)
	beta := float32(0)
	if accumulate {
		beta = 1
	}
	storeTile(tile, c, ldc, mr, nr, beta)
}

// packedProduct computes C[m×n] (+)= A·B from A packed by packA (m rows,
// k values each) and B packed by packB (k values, n columns), without
// blocking k: for the small products of the chunked scan.
func packedProduct(m, n, k int, ap, bp, c []float32, ldc int, accumulate bool, tile []float32) {
	for jr := 0; jr < n; jr += gemmNR {
		nr := min(gemmNR, n-jr)
		for ir := 0; ir < m; ir += gemmMR {
			tileProduct(k, ap[ir*k:], bp[jr*k:], c[ir*ldc+jr:], ldc, min(gemmMR, m-ir), nr, accumulate, tile)
		}
	}
}

// gemmWorkspace holds the packed panels of one gemmBlocked call.
type gemmWorkspace struct {
	b    [gemmKC * gemmNC]float32
	a    [gemmKC * gemmMC]float32
	tile [gemmMR * gemmNR]float32
}

// gemmPool recycles workspaces: the chunked scan calls gemm thousands of
// times per operation on small matrices.
var gemmPool = sync.Pool{New: func() any { return new(gemmWorkspace) }}

// storeTile writes (beta 0) or adds (beta 1) the mr×nr corner of tile to C.
func storeTile(tile []float32, c []float32, ldc, mr, nr int, beta float32) {
	for i := range mr {
		row := c[i*ldc : i*ldc+nr]
		src := tile[i*gemmNR : i*gemmNR+nr]
		if beta == 0 {
			copy(row, src)
			continue
		}
		for j, v := range src {
			row[j] += v
		}
	}
}

// packB copies op(B)[p0:p0+kc, j0:j0+nc] into strips of gemmNR columns,
// each strip k-major (gemmNR values per k), zero-padding the last strip.
func packB(transB bool, b []float32, ldb, p0, j0, kc, nc int, dst []float32) {
	for jr := 0; jr < nc; jr += gemmNR {
		strip := dst[jr*kc : jr*kc+gemmNR*kc]
		nr := min(gemmNR, nc-jr)
		if !transB {
			if nr == gemmNR { // whole rows: fixed-size array copies, no memmove calls
				for p := range kc {
					*(*[gemmNR]float32)(strip[p*gemmNR:]) = *(*[gemmNR]float32)(b[(p0+p)*ldb+j0+jr:])
				}
				continue
			}
			for p := range kc {
				row := b[(p0+p)*ldb+j0+jr:][:nr]
				d := strip[p*gemmNR : (p+1)*gemmNR]
				copy(d, row)
				clear(d[nr:])
			}
			continue
		}
		// Gather: each packed k-row of the strip reads one value from each
		// of the nr source rows and is written contiguously.
		var src [gemmNR][]float32
		for j := range nr {
			src[j] = b[(j0+jr+j)*ldb+p0:][:kc]
		}
		if nr == gemmNR {
			for p := range kc {
				d := (*[gemmNR]float32)(strip[p*gemmNR : (p+1)*gemmNR])
				for j := range d {
					d[j] = src[j][p]
				}
			}
			continue
		}
		for p := range kc {
			d := strip[p*gemmNR : (p+1)*gemmNR]
			for j := range nr {
				d[j] = src[j][p]
			}
			clear(d[nr:])
		}
	}
}

// packA copies op(A)[i0:i0+mc, p0:p0+kc] into strips of gemmMR rows, each
// strip k-major, zero-padding the last strip.
func packA(transA bool, a []float32, lda, i0, p0, mc, kc int, dst []float32) {
	for ir := 0; ir < mc; ir += gemmMR {
		strip := dst[ir*kc : ir*kc+gemmMR*kc]
		mr := min(gemmMR, mc-ir)
		if transA {
			if mr == gemmMR {
				for p := range kc {
					*(*[gemmMR]float32)(strip[p*gemmMR:]) = *(*[gemmMR]float32)(a[(p0+p)*lda+i0+ir:])
				}
				continue
			}
			for p := range kc {
				row := a[(p0+p)*lda+i0+ir:][:mr]
				d := strip[p*gemmMR : (p+1)*gemmMR]
				copy(d, row)
				clear(d[mr:])
			}
			continue
		}
		if mr == gemmMR {
			var rows [gemmMR][]float32
			for i := range rows {
				rows[i] = a[(i0+ir+i)*lda+p0:][:kc]
			}
			for p := range kc {
				d := (*[gemmMR]float32)(strip[p*gemmMR : (p+1)*gemmMR])
				for i := range d {
					d[i] = rows[i][p]
				}
			}
			continue
		}
		for i := range gemmMR {
			if i >= mr {
				for p := range kc {
					strip[p*gemmMR+i] = 0
				}
				continue
			}
			src := a[(i0+ir+i)*lda+p0:][:kc]
			for p, v := range src {
				strip[p*gemmMR+i] = v
			}
		}
	}
}

// microKernelGo is the portable micro-kernel: one row of the tile at a
// time, gemmNR accumulators per row.
func microKernelGo(kc int, a, b, c []float32, ldc int, accumulate bool) {
	a = a[:gemmMR*kc]
	b = b[:gemmNR*kc]
	for i := range gemmMR {
		var acc [gemmNR]float32
		for p := range kc {
			av := a[p*gemmMR+i]
			bs := b[p*gemmNR : (p+1)*gemmNR : (p+1)*gemmNR]
			for j := range acc {
				acc[j] += av * bs[j]
			}
		}
		row := c[i*ldc : i*ldc+gemmNR]
		if !accumulate {
			copy(row, acc[:])
			continue
		}
		for j, v := range acc {
			row[j] += v
		}
	}
}
