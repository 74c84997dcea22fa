package cuda

import (
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/conformance"
)

// Benchmarks time device work with CUDA events on the backend's stream:
// a few warm-up runs, then b.N timed runs; they report the median in
// ms/op-median and, where bytes are counted, GB/s (bytes read + written
// over the median time). Run them on a GPU machine with a fixed count:
//
//	./cuda.test -test.run '^$' -test.bench . -test.benchtime 20x

// timer brackets device work with a pair of events.
type timer struct {
	be         *Backend
	start, end uintptr
}

func newTimer(b *testing.B, be *Backend) *timer {
	tm := &timer{be: be}
	err := be.do("events", func() error {
		var err error
		if tm.start, err = be.drv.newEvent(); err != nil {
			return err
		}
		tm.end, err = be.drv.newEvent()
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = be.do("events", func() error {
			call(be.drv.eventDestroy, tm.start)
			call(be.drv.eventDestroy, tm.end)
			return nil
		})
	})
	return tm
}

// ms runs op (which enqueues work) between the two events and returns the
// device time in milliseconds. Events, op and the wait run in one Pinned
// call on the owner thread, so no thread hand-off sits between the start
// event and op's launches: its latency (tens of µs, the floor that small
// kernels showed before) is not device time.
func (tm *timer) ms(op func() error) (float64, error) {
	be := tm.be
	var ms float32
	err := be.Pinned(func() error {
		if err := be.drv.record(tm.start, be.stream); err != nil {
			return err
		}
		if err := op(); err != nil {
			return err
		}
		if err := be.drv.record(tm.end, be.stream); err != nil {
			return err
		}
		var err error
		ms, err = be.drv.elapsed(tm.start, tm.end)
		return err
	})
	return float64(ms), err
}

// measure warms op up, times it b.N times and reports the median (and
// GB/s when bytes > 0). It returns the median in milliseconds.
func measure(b *testing.B, be *Backend, bytes float64, op func() error) float64 {
	tm := newTimer(b, be)
	for range 3 {
		if _, err := tm.ms(op); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	times := make([]float64, 0, b.N)
	for range b.N {
		ms, err := tm.ms(op)
		if err != nil {
			b.Fatal(err)
		}
		times = append(times, ms)
	}
	b.StopTimer()
	slices.Sort(times)
	med := times[len(times)/2]
	b.ReportMetric(med, "ms/op-median")
	b.ReportMetric(times[0], "ms/op-min")
	if bytes > 0 {
		b.ReportMetric(bytes/(med*1e-3)/1e9, "GB/s")
	}
	return med
}

// randomTensor uploads uniform values in [lo, hi) (never zeros) as dt.
func randomTensor(b *testing.B, be kernels.Backend, rng *rand.Rand, dt kernels.DType, lo, hi float64, shape ...int) kernels.Tensor {
	n := 1
	for _, d := range shape {
		n *= d
	}
	host := make([]float32, n)
	for i := range host {
		host[i] = float32(lo + (hi-lo)*rng.Float64())
	}
	t, err := be.Upload(host, dt, shape...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { be.Free(t) })
	return t
}

func benchBackend(b *testing.B) *Backend {
	shrinkBench()
	if ok, why := Available(); !ok {
		b.Skipf("no CUDA device: %s; %s", why, howToRun)
	}
	be, err := New(0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = be.Close() })
	return be.(*Backend)
}

// copyGBps is the device-to-device copy bandwidth measured by BenchmarkCopy
// in this process (0 until it has run), the yardstick of the scan's GB/s.
var copyGBps float64

// BenchmarkCopy: cuMemcpyDtoDAsync of 2 GiB, counting bytes read plus
// bytes written.
func BenchmarkCopy(b *testing.B) {
	be := benchBackend(b)
	n := 1 << 29 // float32 elements: 2 GiB
	if *benchSmall {
		n = 1 << 20
	}
	src, err := be.Alloc(kernels.F32, n)
	if err != nil {
		b.Fatal(err)
	}
	defer be.Free(src)
	dst, err := be.Alloc(kernels.F32, n)
	if err != nil {
		b.Fatal(err)
	}
	defer be.Free(dst)
	s, d := src.(*Tensor), dst.(*Tensor)
	bytes := 2.0 * 4 * float64(n)
	ms := measure(b, be, bytes, func() error {
		return be.do("copy", func() error { return be.drv.dtod(d.ptr, s.ptr, 4*n, be.stream) })
	})
	copyGBps = bytes / (ms * 1e-3) / 1e9
}

// Phi-2 layer size of the scan benchmark; -cuda.small shrinks batch,
// sequence and heads for a quick run (or the emulator).
var (
	benchSmall                             = flag.Bool("cuda.small", false, "benchmark small sizes")
	benchB, benchL, benchH, benchP, benchN = 8, 4096, 32, 80, 80
)

func shrinkBench() {
	if *benchSmall {
		benchB, benchL, benchH = 1, 256, 4
	}
}

// ssdBytes is the minimal traffic of one scan: x, B, C (at their dtype)
// and dt (float32) read once, y (float32) written once.
func ssdBytes(xSize int) float64 {
	tok := float64(benchB * benchL)
	return tok * float64(benchH*benchP*xSize+2*benchH*benchN*xSize+4*benchH+4*benchH*benchP)
}

// BenchmarkSSDChunkScan: the chunked scan at Phi-2 layer size (batch 8,
// seqlen 4096, 32 heads × headdim 80, d_state 80, 32 groups), bf16 x/B/C
// and f32 dt (tensor cores), for several chunk lengths, and f32 x/B/C
// (CUDA cores). The first sub-benchmark also checks the result against
// the sequential recurrence (double-precision state) on the same inputs.
func BenchmarkSSDChunkScan(b *testing.B) {
	be := benchBackend(b)
	rng := rand.New(rand.NewPCG(11, 12))
	for _, c := range []struct {
		dtype kernels.DType
		chunk int
		check bool
	}{{kernels.BF16, 64, true}, {kernels.BF16, 32, false}, {kernels.BF16, 128, false}, {kernels.F32, 64, false}} {
		b.Run(fmt.Sprintf("%v/chunk=%d", c.dtype, c.chunk), func(b *testing.B) {
			x := randomTensor(b, be, rng, c.dtype, -1, 1, benchB, benchL, benchH, benchP)
			dt := randomTensor(b, be, rng, kernels.F32, 0.001, 0.1, benchB, benchL, benchH)
			A := randomTensor(b, be, rng, kernels.F32, -16, -1, benchH)
			B := randomTensor(b, be, rng, c.dtype, -1, 1, benchB, benchL, benchH, benchN)
			C := randomTensor(b, be, rng, c.dtype, -1, 1, benchB, benchL, benchH, benchN)
			D := randomTensor(b, be, rng, kernels.F32, 0.5, 1.5, benchH)
			y, err := be.Alloc(kernels.F32, benchB, benchL, benchH, benchP)
			if err != nil {
				b.Fatal(err)
			}
			defer be.Free(y)
			bytes := ssdBytes(c.dtype.Size())
			ms := measure(b, be, bytes, func() error { return be.SSDChunkScan(y, x, dt, A, B, C, D, nil, c.chunk) })
			if copyGBps > 0 {
				b.ReportMetric(bytes/(ms*1e-3)/1e9/copyGBps, "of-copy-bw")
			}
			if c.check {
				yr, err := be.Alloc(kernels.F32, benchB, benchL, benchH, benchP)
				if err != nil {
					b.Fatal(err)
				}
				defer be.Free(yr)
				if err := be.SSDRecurrence(yr, x, dt, A, B, C, D, nil); err != nil {
					b.Fatal(err)
				}
				got, err := be.Download(y)
				if err != nil {
					b.Fatal(err)
				}
				want, err := be.Download(yr)
				if err != nil {
					b.Fatal(err)
				}
				g64, w64 := make([]float64, len(got)), make([]float64, len(want))
				for i := range got {
					g64[i], w64[i] = float64(got[i]), float64(want[i])
				}
				rel := conformance.RelErr(g64, w64)
				b.ReportMetric(rel, "relerr-vs-recurrence")
				if !(rel < 1e-4) {
					b.Errorf("chunked scan vs recurrence: relative error %.3g", rel)
				}
			}
			if c.dtype == kernels.BF16 {
				pb := be.tcSplit(benchB, benchH, benchP, benchN, c.chunk)
				be.logResources(b, "ssd_tc", "k_ssd_tc", fmt.Sprintf("SSD_Q=%d", c.chunk), fmt.Sprintf("SSD_PB=%d", pb), fmt.Sprintf("SSD_N=%d", benchN),
					fmt.Sprintf("SSD_CW=%d", tcCols(c.chunk, pb)))
			} else {
				be.logResources(b, "core", "k_ssd_cc")
			}
		})
	}
}

// BenchmarkSSDChunkScanVariants: the tensor-core scan (ssd_tc.cu) against
// its pipelined version (ssd_tc2.cu, the "tc2-" and, with W as one bf16
// term, "tc2w1-" variants) on the same inputs, other chunk lengths, and the kernels with
// stages left out (SSD_SKIP; wrong results, for the time breakdown only).
// Complete variants are checked against the sequential recurrence.
func BenchmarkSSDChunkScanVariants(b *testing.B) {
	be := benchBackend(b)
	rng := rand.New(rand.NewPCG(19, 20))
	x := randomTensor(b, be, rng, kernels.BF16, -1, 1, benchB, benchL, benchH, benchP)
	dt := randomTensor(b, be, rng, kernels.F32, 0.001, 0.1, benchB, benchL, benchH)
	A := randomTensor(b, be, rng, kernels.F32, -16, -1, benchH)
	B := randomTensor(b, be, rng, kernels.BF16, -1, 1, benchB, benchL, benchH, benchN)
	C := randomTensor(b, be, rng, kernels.BF16, -1, 1, benchB, benchL, benchH, benchN)
	D := randomTensor(b, be, rng, kernels.F32, 0.5, 1.5, benchH)
	y, err := be.Alloc(kernels.F32, benchB, benchL, benchH, benchP)
	if err != nil {
		b.Fatal(err)
	}
	defer be.Free(y)
	yr, err := be.Alloc(kernels.F32, benchB, benchL, benchH, benchP)
	if err != nil {
		b.Fatal(err)
	}
	defer be.Free(yr)
	if err := be.SSDRecurrence(yr, x, dt, A, B, C, D, nil); err != nil {
		b.Fatal(err)
	}
	want := downloadF64(b, be, yr)
	s := &scan{y: y.(*Tensor), x: x.(*Tensor), dt: dt.(*Tensor), A: A.(*Tensor), B: B.(*Tensor), C: C.(*Tensor), D: D.(*Tensor),
		nb: benchB, l: benchL, h: benchH, p: benchP, n: benchN, hx: benchH, hb: benchH, hc: benchH}
	type variant struct {
		name, mod, fn string
		chunk, cw     int
		smem          func(q, pb, n int) int
		defs          []string
	}
	v2 := func(name string, chunk, cw int, defs ...string) variant {
		return variant{name, "ssd_tc", "k_ssd_tc", chunk, cw, tcSharedBytes, append([]string{fmt.Sprintf("SSD_CW=%d", cw)}, defs...)}
	}
	vs := []variant{v2("cw8", 64, 8), v2("cw16", 64, 16), v2("cw8", 64, 8), v2("cw16", 64, 16),
		v2("cw8", 32, 8), v2("cw16", 32, 16), v2("cw16", 128, 16)}
	for _, skip := range []struct {
		bit  int
		name string
	}{{1, "no-Yoff"}, {2, "no-G-W"}, {4, "no-Wx"}, {8, "no-state"}, {16, "no-loads"}, {31, "nothing"}} {
		vs = append(vs, v2("cw16-"+skip.name, 64, 16, fmt.Sprintf("SSD_SKIP=%d", skip.bit)))
	}
	// ssd_tc2.cu (one barrier a chunk; tcPipelined): both warp widths at
	// chunks of 64 and 32 (the "-late" order and "no-G-W" were measured on
	// 2026-11-29 and dropped), and its bf16-precision variant SSD_W1 (W as
	// one bf16 term; tcW1), checked at tc2W1TolY instead of 1e-4.
	tc2 := func(name string, chunk, cw int, defs ...string) variant {
		return variant{name, "ssd_tc2", "k_ssd_tc2", chunk, cw, tc2SharedBytes, append([]string{fmt.Sprintf("SSD_CW=%d", cw)}, defs...)}
	}
	tc2w1 := func(name string, chunk, cw int) variant {
		return variant{name, "ssd_tc2", "k_ssd_tc2", chunk, cw, tc2W1SharedBytes, []string{fmt.Sprintf("SSD_CW=%d", cw), "SSD_W1=1"}}
	}
	vs = append(vs, tc2("tc2-cw8", 64, 8), tc2("tc2-cw16", 64, 16), tc2("tc2-cw8", 32, 8), tc2("tc2-cw16", 32, 16),
		tc2w1("tc2w1-cw8", 64, 8), tc2w1("tc2w1-cw16", 64, 16), tc2w1("tc2w1-cw8", 32, 8), tc2w1("tc2w1-cw16", 32, 16))
	for _, v := range vs {
		b.Run(fmt.Sprintf("%s/chunk=%d", v.name, v.chunk), func(b *testing.B) {
			pb := be.pickSplit(s, 16, func(pb int) int { return v.smem(v.chunk, pb, benchN) })
			smem := v.smem(v.chunk, pb, benchN)
			run := func() error {
				return be.do("scan variant", func() error {
					return be.launchTC("scan variant", v.mod, v.fn, smem, s, v.chunk, pb, v.cw, v.defs...)
				})
			}
			bytes := ssdBytes(2)
			ms := measure(b, be, bytes, run)
			if copyGBps > 0 {
				b.ReportMetric(bytes/(ms*1e-3)/1e9/copyGBps, "of-copy-bw")
			}
			if defs := strings.Join(v.defs, " "); !strings.Contains(defs, "SSD_SKIP") {
				tol := 1e-4
				if strings.Contains(defs, "SSD_W1=1") {
					tol = tc2W1TolY // W as one bf16 term: flash-attention-class precision
				}
				rel := conformance.RelErr(downloadF64(b, be, y), want)
				b.ReportMetric(rel, "relerr-vs-recurrence")
				if !(rel < tol) {
					b.Errorf("%s: relative error %.3g against the recurrence (tolerance %.3g)", v.name, rel, tol)
				}
			}
			defs := append([]string{fmt.Sprintf("SSD_Q=%d", v.chunk), fmt.Sprintf("SSD_PB=%d", pb), fmt.Sprintf("SSD_N=%d", benchN)}, v.defs...)
			be.logResources(b, v.mod, v.fn, defs...)
		})
	}
}

// downloadF64 copies a float32 tensor to the host as float64.
func downloadF64(b *testing.B, be *Backend, t kernels.Tensor) []float64 {
	h, err := be.Download(t)
	if err != nil {
		b.Fatal(err)
	}
	out := make([]float64, len(h))
	for i, v := range h {
		out[i] = float64(v)
	}
	return out
}

// BenchmarkSSDRecurrence: the sequential scan (one warp per row, double
// state) at the same size.
func BenchmarkSSDRecurrence(b *testing.B) {
	be := benchBackend(b)
	rng := rand.New(rand.NewPCG(13, 14))
	x := randomTensor(b, be, rng, kernels.BF16, -1, 1, benchB, benchL, benchH, benchP)
	dt := randomTensor(b, be, rng, kernels.F32, 0.001, 0.1, benchB, benchL, benchH)
	A := randomTensor(b, be, rng, kernels.F32, -16, -1, benchH)
	B := randomTensor(b, be, rng, kernels.BF16, -1, 1, benchB, benchL, benchH, benchN)
	C := randomTensor(b, be, rng, kernels.BF16, -1, 1, benchB, benchL, benchH, benchN)
	y, err := be.Alloc(kernels.F32, benchB, benchL, benchH, benchP)
	if err != nil {
		b.Fatal(err)
	}
	defer be.Free(y)
	measure(b, be, ssdBytes(2), func() error { return be.SSDRecurrence(y, x, dt, A, B, C, nil, nil) })
}

// BenchmarkMatMul: cuBLAS through the backend, bf16 and f32 operands.
func BenchmarkMatMul(b *testing.B) {
	be := benchBackend(b)
	rng := rand.New(rand.NewPCG(15, 16))
	for _, c := range []struct {
		dt      kernels.DType
		m, n, k int
	}{{kernels.BF16, 8192, 8192, 8192}, {kernels.F32, 4096, 4096, 4096}} {
		if *benchSmall {
			c.m, c.n, c.k = 256, 128, 64
		}
		b.Run(fmt.Sprintf("%v/%dx%dx%d", c.dt, c.m, c.n, c.k), func(b *testing.B) {
			a := randomTensor(b, be, rng, c.dt, -1, 1, c.m, c.k)
			w := randomTensor(b, be, rng, c.dt, -1, 1, c.n, c.k)
			out, err := be.Alloc(kernels.F32, c.m, c.n)
			if err != nil {
				b.Fatal(err)
			}
			defer be.Free(out)
			ms := measure(b, be, 0, func() error { return be.MatMul(out, a, w, true) })
			b.ReportMetric(2*float64(c.m)*float64(c.n)*float64(c.k)/(ms*1e-3)/1e12, "TFLOP/s")
		})
	}
}

// BenchmarkSoftmaxAttention: causal attention at Phi-2 size (32 heads of
// 80) for one sequence of 2048 tokens.
func BenchmarkSoftmaxAttention(b *testing.B) {
	be := benchBackend(b)
	rng := rand.New(rand.NewPCG(17, 18))
	nb, l, h, p := 1, 2048, 32, 80
	if *benchSmall {
		l, h = 128, 2
	}
	q := randomTensor(b, be, rng, kernels.F32, -1, 1, nb, l, h, p)
	k := randomTensor(b, be, rng, kernels.F32, -1, 1, nb, l, h, p)
	v := randomTensor(b, be, rng, kernels.F32, -1, 1, nb, l, h, p)
	out, err := be.Alloc(kernels.F32, nb, l, h, p)
	if err != nil {
		b.Fatal(err)
	}
	defer be.Free(out)
	ms := measure(b, be, 0, func() error {
		return be.SoftmaxAttention(out, q, k, v, float32(1/math.Sqrt(float64(p))), true)
	})
	b.ReportMetric(4*float64(nb*h*p)*float64(l)*float64(l)/2/(ms*1e-3)/1e12, "TFLOP/s")
}

// tcSplit is the headdim columns per block the tensor-core scan picks.
func (be *Backend) tcSplit(nb, h, p, n, q int) int {
	s := &scan{nb: nb, h: h, p: p, n: n}
	return be.pickSplit(s, 16, func(pb int) int { return tcBlockBytes(q, pb, n) })
}

// logResources logs a compiled kernel's registers, spilled (local) bytes
// and static shared memory.
func (be *Backend) logResources(b *testing.B, mod, fn string, defines ...string) {
	_ = be.do("resources", func() error {
		f, err := be.kernel(mod, fn, defines...)
		if err != nil {
			b.Log(err)
			return nil
		}
		regs, _ := be.drv.funcAttribute(f, funcAttrNumRegs)
		local, _ := be.drv.funcAttribute(f, funcAttrLocalSizeBytes)
		shared, _ := be.drv.funcAttribute(f, funcAttrSharedSizeBytes)
		b.Logf("%s %v: %d registers, %d bytes local (spills), %d bytes static shared", fn, defines, regs, local, shared)
		return nil
	})
}
