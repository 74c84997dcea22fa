package distill

import "math"

// Normalisations over the last dimension, forward and backward. Means,
// variances and the sums of the backward passes are float64.

// layerNormForward writes y = (x−μ)·rstd·w + b for each row of x[n, d]
// (biased variance, rstd = 1/√(var+eps); b may be nil) and saves μ and
// rstd when mean and rstd are not nil.
func layerNormForward(p *pool, y, x []float32, n, d int, w, b []float32, eps float64, mean, rstd []float64) {
	p.rows(n, grainFor(d), func(lo, hi int) {
		for r := lo; r < hi; r++ {
			row := x[r*d : (r+1)*d]
			var mu float64
			for _, v := range row {
				mu += float64(v)
			}
			mu /= float64(d)
			var vr float64
			for _, v := range row {
				c := float64(v) - mu
				vr += c * c
			}
			rs := 1 / math.Sqrt(vr/float64(d)+eps)
			out := y[r*d : (r+1)*d]
			for j, v := range row {
				o := (float64(v) - mu) * rs * float64(w[j])
				if b != nil {
					o += float64(b[j])
				}
				out[j] = float32(o)
			}
			if mean != nil {
				mean[r], rstd[r] = mu, rs
			}
		}
	})
}

// layerNormBackward adds to dx[n, d] the gradient of the input of a
// LayerNorm with weight w, given dy and the forward's x, μ and rstd:
// dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) with ĝ = dy·w, x̂ = (x−μ)·rstd.
func layerNormBackward(p *pool, dx, dy, x []float32, n, d int, w []float32, mean, rstd []float64) {
	p.rows(n, grainFor(d), func(lo, hi int) {
		for r := lo; r < hi; r++ {
			xr, gr, out := x[r*d:(r+1)*d], dy[r*d:(r+1)*d], dx[r*d:(r+1)*d]
			mu, rs := mean[r], rstd[r]
			var sg, sgx float64
			for j := range d {
				g := float64(gr[j]) * float64(w[j])
				sg += g
				sgx += g * (float64(xr[j]) - mu) * rs
			}
			sg /= float64(d)
			sgx /= float64(d)
			for j := range d {
				g := float64(gr[j]) * float64(w[j])
				xh := (float64(xr[j]) - mu) * rs
				out[j] += float32(rs * (g - sg - xh*sgx))
			}
		}
	})
}

// rmsNormForward writes y = x·rstd·w for each row of x[n, d],
// rstd = 1/√(mean(x²)+eps), saving rstd when not nil.
func rmsNormForward(p *pool, y, x []float32, n, d int, w []float32, eps float64, rstd []float64) {
	p.rows(n, grainFor(d), func(lo, hi int) {
		for r := lo; r < hi; r++ {
			row := x[r*d : (r+1)*d]
			var ss float64
			for _, v := range row {
				ss += float64(v) * float64(v)
			}
			rs := 1 / math.Sqrt(ss/float64(d)+eps)
			out := y[r*d : (r+1)*d]
			for j, v := range row {
				out[j] = float32(float64(v) * rs * float64(w[j]))
			}
			if rstd != nil {
				rstd[r] = rs
			}
		}
	})
}

// rmsNormBackward adds to dx[n, d] the gradient of an RMSNorm's input:
// dx = rstd·ĝ − rstd³·x·mean(ĝ·x) with ĝ = dy·w.
func rmsNormBackward(p *pool, dx, dy, x []float32, n, d int, w []float32, rstd []float64) {
	p.rows(n, grainFor(d), func(lo, hi int) {
		for r := lo; r < hi; r++ {
			xr, gr, out := x[r*d:(r+1)*d], dy[r*d:(r+1)*d], dx[r*d:(r+1)*d]
			rs := rstd[r]
			var sgx float64
			for j := range d {
				sgx += float64(gr[j]) * float64(w[j]) * float64(xr[j])
			}
			c := rs * rs * rs * sgx / float64(d)
			for j := range d {
				out[j] += float32(rs*float64(gr[j])*float64(w[j]) - c*float64(xr[j]))
			}
		}
	})
}

// gatedRMSNormForward is Mamba-2's RMSNormGated with the norm after the
// gate: per group of group contiguous channels of each row of y[n, width],
// g = y·silu(z), out = g·rstd·w with rstd = 1/√(mean(g²)+eps). rstd
// ([n·width/group]) is saved when not nil.
func gatedRMSNormForward(p *pool, out, y, z []float32, n, width, group int, w []float32, eps float64, rstd []float64) {
	groups := width / group
	p.rows(n, grainFor(width), func(lo, hi int) {
		g := make([]float64, group)
		for r := lo; r < hi; r++ {
			for k := range groups {
				c0 := r*width + k*group
				var ss float64
				for j := range group {
					v := float64(y[c0+j]) * silu(float64(z[c0+j]))
					g[j] = v
					ss += v * v
				}
				rs := 1 / math.Sqrt(ss/float64(group)+eps)
				for j := range group {
					out[c0+j] = float32(g[j] * rs * float64(w[k*group+j]))
				}
				if rstd != nil {
					rstd[r*groups+k] = rs
				}
			}
		}
	})
}

// gatedRMSNormRows is the number of rows of one task of the gated norm's
// backward. It is fixed (not derived from the worker count) so that the
// weight gradient, summed per task and then over tasks in order, does not
// depend on the number of workers.
const gatedRMSNormRows = 32

// gatedRMSNormBackward writes dy and dz (each [n, width]) and adds to dw
// the gradients of the gated norm, given dout and the forward's y, z and
// rstd:
//
//	ĝ = dout·w, dg = rstd·ĝ − rstd³·g·mean(ĝ·g), dw += Σ_rows dout·g·rstd,
//	dy = dg·silu(z), dz = dg·y·silu′(z).
func gatedRMSNormBackward(p *pool, dy, dz, dw, dout, y, z []float32, n, width, group int, w []float32, rstd []float64) {
	groups := width / group
	tasks := (n + gatedRMSNormRows - 1) / gatedRMSNormRows
	partial := make([][]float64, tasks)
	p.tasks(tasks, func(_, t int) {
		acc := make([]float64, width)
		g := make([]float64, group)
		for r := t * gatedRMSNormRows; r < min(n, (t+1)*gatedRMSNormRows); r++ {
			for k := range groups {
				c0 := r*width + k*group
				rs := rstd[r*groups+k]
				var sgg float64
				for j := range group {
					v := float64(y[c0+j]) * silu(float64(z[c0+j]))
					g[j] = v
					sgg += float64(dout[c0+j]) * float64(w[k*group+j]) * v
				}
				c := rs * rs * rs * sgg / float64(group)
				for j := range group {
					do := float64(dout[c0+j])
					acc[k*group+j] += do * g[j] * rs
					dg := rs*do*float64(w[k*group+j]) - c*g[j]
					zv := float64(z[c0+j])
					dy[c0+j] = float32(dg * silu(zv))
					dz[c0+j] = float32(dg * float64(y[c0+j]) * siluGrad(zv))
				}
			}
		}
		partial[t] = acc
	})
	sumInto(dw, partial)
}

// sumInto adds the float64 partial sums, in order, to dst.
func sumInto(dst []float32, partial [][]float64) {
	for j := range dst {
		var s float64
		for _, part := range partial {
			s += part[j]
		}
		dst[j] += float32(s)
	}
}
