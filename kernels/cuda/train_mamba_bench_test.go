package cuda

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/conformance"
)

// Benchmarks of the Mamba-2 backward at the distillation's training size
// (TinyLLaVA-Phi-2 mixer: batch 1, 1428 tokens, 32 heads × headdim 80,
// d_state 80, 32 groups; conv over 3·2560 channels, kernel 4; gated norm
// over 2560 channels in groups of 80) and the scan also at batch 8 × 4096.
// -cuda.small shrinks every size for a quick run. GB/s counts the
// minimal traffic: each input read once, each output written once (the
// scan's chunk states and partial sums are extra).

// mambaBenchSize is one scan size.
type mambaBenchSize struct{ nb, l, h, p, n int }

func (s mambaBenchSize) small() mambaBenchSize {
	if *benchSmall {
		return mambaBenchSize{nb: 1, l: 200, h: 2, p: s.p, n: s.n}
	}
	return s
}

// scanBwdBytes is the scan backward's minimal traffic: x, B, C (size xs
// bytes an element), dt and dy read; dx, ddt, dB and dC written (float32).
func scanBwdBytes(s mambaBenchSize, xs int) float64 {
	tok := float64(s.nb * s.l)
	return tok * float64(s.h*(s.p*xs+4*s.p+4*s.p+4+4)+s.h*2*s.n*(xs+4))
}

// BenchmarkSSDChunkScanBackward: the scan backward at the training size
// (f32 and bf16 x/B/C, tiles of 64 and 32 tokens) and at batch 8 × 4096.
// The first sub-benchmark also checks two heads against the float64
// recurrent backward (relerr-vs-float64: the largest of dx, ddt, dB, dC,
// dA, dD).
func BenchmarkSSDChunkScanBackward(b *testing.B) {
	be := benchBackend(b)
	train, big := mambaBenchSize{1, 1428, 32, 80, 80}.small(), mambaBenchSize{8, 4096, 32, 80, 80}.small()
	for _, c := range []struct {
		size  mambaBenchSize
		dtype kernels.DType
		tile  int
		check bool
	}{
		{train, kernels.F32, 0, true}, {train, kernels.BF16, 0, false}, {train, kernels.F32, 32, false},
		{big, kernels.F32, 0, false}, {big, kernels.BF16, 0, false},
	} {
		s := c.size
		name := fmt.Sprintf("b%d_l%d/%v", s.nb, s.l, c.dtype)
		if c.tile != 0 {
			name += fmt.Sprintf("/tile=%d", c.tile)
		}
		b.Run(name, func(b *testing.B) {
			defer func(saved int) { scanBwdTile = saved }(scanBwdTile)
			scanBwdTile = c.tile
			rng := rand.New(rand.NewPCG(41, 42))
			sh := scanShape{nb: s.nb, l: s.l, h: s.h, p: s.p, g: s.h, n: s.n}
			r := randomScan(rng, sh, c.dtype == kernels.BF16, true, 0.1, -16)
			up := func(v []float64, dt kernels.DType, shape ...int) kernels.Tensor {
				return upload64(b, be, v, dt, shape...)
			}
			x, B, C := up(r.x, c.dtype, s.nb, s.l, s.h, s.p), up(r.B, c.dtype, s.nb, s.l, s.h, s.n), up(r.C, c.dtype, s.nb, s.l, s.h, s.n)
			dt, A, D := up(r.dt, kernels.F32, s.nb, s.l, s.h), up(r.A, kernels.F32, s.h), up(r.D, kernels.F32, s.h)
			dy := up(r.dy, kernels.F32, s.nb, s.l, s.h, s.p)
			alloc := func(shape ...int) kernels.Tensor {
				t, err := be.Alloc(kernels.F32, shape...)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { be.Free(t) })
				return t
			}
			dx, ddt, dB, dC := alloc(s.nb, s.l, s.h, s.p), alloc(s.nb, s.l, s.h), alloc(s.nb, s.l, s.h, s.n), alloc(s.nb, s.l, s.h, s.n)
			dA, dD := up(make([]float64, s.h), kernels.F32, s.h), up(make([]float64, s.h), kernels.F32, s.h)
			op := func() error { return be.SSDChunkScanBackward(dx, ddt, dA, dB, dC, dD, dy, x, dt, A, B, C, D, 64) }
			bytes := scanBwdBytes(s, c.dtype.Size())
			ms := measure(b, be, bytes, op)
			if copyGBps > 0 {
				b.ReportMetric(bytes/(ms*1e-3)/1e9/copyGBps, "of-copy-bw")
			}
			pl, err := be.planScanBackward(s.p, s.n)
			if err != nil {
				b.Fatal(err)
			}
			b.Logf("tile %d tokens, %d and %d threads, %d and %d bytes of shared memory", pl.q, pl.t1, pl.t, pl.smem1, pl.smem)
			be.logResources(b, "train_mamba_scan", "k_mamba_chunk_states", pl.defines()...)
			be.logResources(b, "train_mamba_scan", "k_mamba_scan_bwd", pl.defines()...)
			if c.check {
				// dA and dD have summed 3 + b.N calls: start them over.
				if err := hostFill(be, dA, 0); err != nil {
					b.Fatal(err)
				}
				if err := hostFill(be, dD, 0); err != nil {
					b.Fatal(err)
				}
				if err := op(); err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(checkHeads(b, be, sh, r, []int{0, s.h - 1}, dx, ddt, dA, dB, dC, dD), "relerr-vs-float64")
			}
		})
	}
}

// hostFill writes v into every element of an F32 tensor (through a host
// upload).
func hostFill(be *Backend, t kernels.Tensor, v float32) error {
	ct, err := be.tensor(t, "fill")
	if err != nil {
		return err
	}
	h := make([]float32, ct.n)
	for i := range h {
		h[i] = v
	}
	src, err := be.Upload(h, kernels.F32, ct.shape...)
	if err != nil {
		return err
	}
	defer be.Free(src)
	return be.CopyRows(t, 0, src, 0, ct.n/ct.shape[len(ct.shape)-1])
}

// checkHeads compares the gradients of the given heads (groups = heads)
// with the float64 backward of those heads alone and returns the largest
// relative error.
func checkHeads(b *testing.B, be *Backend, sh scanShape, r *scanRef, heads []int, dx, ddt, dA, dB, dC, dD kernels.Tensor) float64 {
	one, sub := pickHeads(sh, r, heads)
	pick := func(v []float64, width int) []float64 { return pickRows(sh, v, width, heads) }
	one.backward(sub)
	worst := 0.0
	for _, k := range []struct {
		name  string
		got   kernels.Tensor
		width int
		want  []float64
	}{{"dx", dx, sh.p, sub.dx}, {"ddt", ddt, 1, sub.ddt}, {"dB", dB, sh.n, sub.dB}, {"dC", dC, sh.n, sub.dC}} {
		e := conformance.RelErr(pick(download(b, be, k.got), k.width), k.want)
		b.Logf("%s of heads %v: relative error %.3g", k.name, heads, e)
		worst = max(worst, e)
	}
	for _, k := range []struct {
		name string
		got  kernels.Tensor
		want []float64
	}{{"dA", dA, sub.dA}, {"dD", dD, sub.dD}} {
		all := download(b, be, k.got)
		var got []float64
		for _, h := range heads {
			got = append(got, all[h])
		}
		e := conformance.RelErr(got, k.want)
		b.Logf("%s of heads %v: relative error %.3g", k.name, heads, e)
		worst = max(worst, e)
	}
	if !(worst <= 1e-5) {
		b.Errorf("scan backward vs float64: relative error %.3g > 1e-5", worst)
	}
	return worst
}

// BenchmarkMambaGradSmallOps: the conv, dt softplus and gated norm
// backward at the training size, parameter gradients included.
func BenchmarkMambaGradSmallOps(b *testing.B) {
	be := benchBackend(b)
	rows, conv, inner := 1428, 3*2560, 2560
	if *benchSmall {
		rows, conv, inner = 100, 96, 160
	}
	rng := rand.New(rand.NewPCG(43, 44))
	up := func(n int, lo, hi float64, shape ...int) kernels.Tensor {
		return upload64(b, be, uniform(rng, n, lo, hi, false), kernels.F32, shape...)
	}
	b.Run(fmt.Sprintf("conv_l%d_c%d_k4", rows, conv), func(b *testing.B) {
		n := rows * conv
		u, dout, du := up(n, -2, 2, 1, rows, conv), up(n, -1, 1, 1, rows, conv), up(n, 0, 1, 1, rows, conv)
		w, bias := up(conv*4, -0.5, 0.5, conv, 4), up(conv, -0.5, 0.5, conv)
		dw, db := up(conv*4, 0, 1, conv, 4), up(conv, 0, 1, conv)
		measure(b, be, 12*float64(n), func() error { return be.CausalConv1dBackward(du, dw, db, dout, u, w, bias, true) })
	})
	b.Run(fmt.Sprintf("dtsoftplus_r%d_h32", rows), func(b *testing.B) {
		n := rows * 32
		raw, ddt, out := up(n, -5, 5, rows, 32), up(n, -1, 1, rows, 32), up(n, 0, 1, rows, 32)
		bias, db := up(32, -3, 3, 32), up(32, 0, 1, 32)
		measure(b, be, 12*float64(n), func() error { return be.DtSoftplusBackward(out, db, ddt, raw, bias) })
	})
	b.Run(fmt.Sprintf("gatednorm_r%d_w%d_g80", rows, inner), func(b *testing.B) {
		n := rows * inner
		y, z, dout := up(n, -2, 2, rows, inner), up(n, -3, 3, rows, inner), up(n, -1, 1, rows, inner)
		dy, dz := up(n, 0, 1, rows, inner), up(n, 0, 1, rows, inner)
		w, dw := up(inner, 0.5, 1.5, inner), up(inner, 0, 1, inner)
		measure(b, be, 20*float64(n), func() error { return be.GatedRMSNormBackward(dy, dz, dw, dout, y, z, w, 80, 1e-5) })
	})
}

// BenchmarkSSDChunkScanBackwardStages times the scan backward's stages
// (CUDA events between its kernels, medians over b.N calls): chunk states
// (pass 1), state pass, chunk gradients (pass 2), and the sums (group
// sums when groups < heads, dA and dD), as ms-<stage> metrics.
func BenchmarkSSDChunkScanBackwardStages(b *testing.B) {
	be := benchBackend(b)
	for _, s := range []mambaBenchSize{mambaBenchSize{1, 1428, 32, 80, 80}.small(), mambaBenchSize{8, 4096, 32, 80, 80}.small()} {
		for _, tile := range []int{64, 32} {
			b.Run(fmt.Sprintf("b%d_l%d/tile=%d", s.nb, s.l, tile), func(b *testing.B) {
				defer func(saved int) { scanBwdTile = saved }(scanBwdTile)
				scanBwdTile = tile
				rng := rand.New(rand.NewPCG(45, 46))
				up := func(n int, lo, hi float64, shape ...int) kernels.Tensor {
					return upload64(b, be, uniform(rng, n, lo, hi, false), kernels.F32, shape...)
				}
				tok := s.nb * s.l
				x, dy, dx := up(tok*s.h*s.p, -1, 1, s.nb, s.l, s.h, s.p), up(tok*s.h*s.p, -1, 1, s.nb, s.l, s.h, s.p), up(tok*s.h*s.p, 0, 1, s.nb, s.l, s.h, s.p)
				B, C := up(tok*s.h*s.n, -1, 1, s.nb, s.l, s.h, s.n), up(tok*s.h*s.n, -1, 1, s.nb, s.l, s.h, s.n)
				dB, dC := up(tok*s.h*s.n, 0, 1, s.nb, s.l, s.h, s.n), up(tok*s.h*s.n, 0, 1, s.nb, s.l, s.h, s.n)
				dt, ddt := up(tok*s.h, 0.001, 0.1, s.nb, s.l, s.h), up(tok*s.h, 0, 1, s.nb, s.l, s.h)
				A, D, dA, dD := up(s.h, -16, -1, s.h), up(s.h, 0.5, 1.5, s.h), up(s.h, 0, 1, s.h), up(s.h, 0, 1, s.h)
				var names []string
				var events []uintptr
				next := 0
				defer func() {
					_ = be.do("events", func() error {
						for _, e := range events {
							call(be.drv.eventDestroy, e)
						}
						return nil
					})
				}()
				scanBwdStage = func(stage string) error {
					if next == len(events) {
						e, err := be.drv.newEvent()
						if err != nil {
							return err
						}
						events, names = append(events, e), append(names, stage)
					}
					next++
					return be.drv.record(events[next-1], be.stream)
				}
				defer func() { scanBwdStage = nil }()
				times := map[string][]float64{}
				for i := range b.N + 3 {
					next = 0
					if err := be.SSDChunkScanBackward(dx, ddt, dA, dB, dC, dD, dy, x, dt, A, B, C, D, 64); err != nil {
						b.Fatal(err)
					}
					err := be.do("elapsed", func() error {
						if err := be.drv.syncStream(be.stream); err != nil {
							return err
						}
						for k := 1; k < next && i >= 3; k++ {
							ms, err := be.drv.elapsed(events[k-1], events[k])
							if err != nil {
								return err
							}
							times[names[k]] = append(times[names[k]], float64(ms))
						}
						return nil
					})
					if err != nil {
						b.Fatal(err)
					}
				}
				for _, name := range names[1:] {
					v := slices.Sorted(slices.Values(times[name]))
					b.ReportMetric(v[len(v)/2], "ms-"+strings.ReplaceAll(name, " ", "-"))
				}
			})
		}
	}
}
