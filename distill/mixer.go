package distill

import (
	"math"

	"github.com/matsurgery/matsurgery/kernels"
)

// mixer is one trainable Mamba-2 mixer (SPEC §3). Optional tensors
// (in_proj/out_proj biases, conv bias, dt_bias, D) are nil when the
// checkpoint lacks them.
type mixer struct {
	cfg             kernels.Mamba2Config
	eps             float64
	inProj, outProj trainableLinear
	convW, convB    *Param // [ConvDim, 1, k], [ConvDim]
	dtBias, aLog, d *Param // [NHeads] each
	normW           *Param // [DInner]
	chunk           int    // tokens between saved scan states
}

// mixerActs are a mixer's activations for n tokens, kept for backward.
type mixerActs struct {
	n        int
	h        []float32 // input [n, DModel] (the caller's)
	proj     []float32 // [n, DProj]: z | xBC | dt_raw
	pre, act []float32 // conv output before and after SiLU [n, ConvDim]
	x        []float32 // [n, NHeads, HeadDim] (repeated)
	B, C     []float32 // [n, NGroups, DState] (B repeated)
	dt       []float32 // [n, NHeads], softplus'ed
	A        []float64 // [NHeads], −exp(A_log)
	y        []float32 // scan output [n, DInner]
	z        []float32 // gate [n, DInner]
	rstd     []float64 // gated norm [n, NGroups]
	yn       []float32 // gated norm output [n, DInner]
	states   []float64 // scan states entering each chunk
}

func (m *mixer) ssdShape(n int) ssdShape {
	c := m.cfg
	return ssdShape{n: n, heads: c.NHeads, headDim: c.HeadDim, groups: c.NGroups, dstate: c.DState, chunk: m.chunk}
}

func optData(p *Param) []float32 {
	if p == nil {
		return nil
	}
	return p.Data
}

func optGrad(p *Param) []float32 {
	if p == nil {
		return nil
	}
	return p.Grad
}

// forward runs the mixer on h [n, DModel] into out [n, DModel]: in_proj,
// causal conv + SiLU over x|B|C, x and B repeated to the heads and groups,
// dt = softplus(dt_raw + dt_bias), A = −exp(A_log), the scan, the gated
// RMSNorm (norm after gate) and out_proj. With save the scan keeps its
// chunk states for backward.
func (m *mixer) forward(p *pool, out, h []float32, n int, save bool) *mixerActs {
	c := m.cfg
	H, P, G, N := c.NHeads, c.HeadDim, c.NGroups, c.DState
	dInner, convDim, dProj := c.DInner(), c.ConvDim(), c.DProj()
	a := &mixerActs{n: n, h: h}

	a.proj = make([]float32, n*dProj)
	m.inProj.forward(p, a.proj, h, n)

	cs := convShape{n: n, c: convDim, k: c.ConvKernel, uStride: dProj, uOff: dInner}
	a.pre, a.act = make([]float32, n*convDim), make([]float32, n*convDim)
	causalConvForward(p, cs, a.pre, a.act, a.proj, m.convW.Data, optData(m.convB))

	a.x = make([]float32, n*H*P)
	repeatForward(p, a.x, a.act, n, convDim, 0, c.DXB/P, H, P)
	a.B = make([]float32, n*G*N)
	repeatForward(p, a.B, a.act, n, convDim, c.DXB, c.DXB/N, G, N)
	a.C = make([]float32, n*G*N)
	copyCols(p, a.C, G*N, 0, a.act, convDim, 2*c.DXB, n, G*N)

	a.dt = make([]float32, n*H)
	dtBias := optData(m.dtBias)
	p.rows(n, grainFor(H), func(lo, hi int) {
		for t := lo; t < hi; t++ {
			for k := range H {
				a.dt[t*H+k] = float32(softplus(m.dtRaw(a.proj, dtBias, t, k)))
			}
		}
	})
	a.A = make([]float64, H)
	for k, v := range m.aLog.Data {
		a.A[k] = -math.Exp(float64(v))
	}

	sh := m.ssdShape(n)
	if save {
		a.states = make([]float64, sh.statesSize())
	}
	a.y = make([]float32, n*dInner)
	ssdForward(p, sh, a.y, a.x, a.dt, a.A, a.B, a.C, optData(m.d), a.states)

	a.z = make([]float32, n*dInner)
	copyCols(p, a.z, dInner, 0, a.proj, dProj, 0, n, dInner)
	a.rstd = make([]float64, n*G)
	a.yn = make([]float32, n*dInner)
	gatedRMSNormForward(p, a.yn, a.y, a.z, n, dInner, dInner/G, m.normW.Data, m.eps, a.rstd)

	m.outProj.forward(p, out, a.yn, n)
	return a
}

// dtRaw is dt_raw + dt_bias of token t, head k, in float64.
func (m *mixer) dtRaw(proj, dtBias []float32, t, k int) float64 {
	c := m.cfg
	r := float64(proj[t*c.DProj()+c.DInner()+c.ConvDim()+k])
	if dtBias != nil {
		r += float64(dtBias[k])
	}
	return r
}

// backward accumulates the gradients of every mixer parameter given dout
// [n, DModel] and the forward's activations, and adds the gradient of the
// input to dh when dh is not nil.
func (m *mixer) backward(p *pool, dh, dout []float32, a *mixerActs) {
	c := m.cfg
	n := a.n
	H, P, G, N := c.NHeads, c.HeadDim, c.NGroups, c.DState
	dInner, convDim, dProj := c.DInner(), c.ConvDim(), c.DProj()

	dyn := make([]float32, n*dInner)
	m.outProj.backward(p, dyn, dout, a.yn, n)

	dy, dz := make([]float32, n*dInner), make([]float32, n*dInner)
	gatedRMSNormBackward(p, dy, dz, m.normW.Grad, dyn, a.y, a.z, n, dInner, dInner/G, m.normW.Data, a.rstd)

	sh := m.ssdShape(n)
	dx, ddt := make([]float32, n*H*P), make([]float32, n*H)
	dB, dC := make([]float32, n*G*N), make([]float32, n*G*N)
	dA := make([]float64, H)
	var dD []float64
	if m.d != nil {
		dD = make([]float64, H)
	}
	ssdBackward(p, sh, dx, ddt, dA, dD, dB, dC, dy, a.x, a.dt, a.A, a.B, a.C, optData(m.d), a.states)
	for k := range H {
		m.aLog.Grad[k] += float32(dA[k] * a.A[k])
		if dD != nil {
			m.d.Grad[k] += float32(dD[k])
		}
	}

	dproj := make([]float32, n*dProj)
	copyCols(p, dproj, dProj, 0, dz, dInner, 0, n, dInner)
	dtBias := optData(m.dtBias)
	dtOff := dInner + convDim
	p.rows(n, grainFor(H), func(lo, hi int) {
		for t := lo; t < hi; t++ {
			for k := range H {
				dproj[t*dProj+dtOff+k] = float32(float64(ddt[t*H+k]) * softplusGrad(m.dtRaw(a.proj, dtBias, t, k)))
			}
		}
	})
	if m.dtBias != nil {
		for k := range H {
			var acc float64
			for t := range n {
				acc += float64(dproj[t*dProj+dtOff+k])
			}
			m.dtBias.Grad[k] += float32(acc)
		}
	}

	dact := make([]float32, n*convDim)
	repeatBackward(p, dact, dx, n, convDim, 0, c.DXB/P, H, P)
	repeatBackward(p, dact, dB, n, convDim, c.DXB, c.DXB/N, G, N)
	copyCols(p, dact, convDim, 2*c.DXB, dC, G*N, 0, n, G*N)

	cs := convShape{n: n, c: convDim, k: c.ConvKernel, uStride: dProj, uOff: dInner}
	causalConvBackward(p, cs, dproj, m.convW.Grad, optGrad(m.convB), dact, a.pre, a.proj, m.convW.Data)

	m.inProj.backward(p, dh, dproj, a.h, n)
}

// repeatForward writes out [n, heads·dim] with head k = source head
// k/(heads/srcHeads) (repeat_interleave, the GQA convention); source head s
// of row t starts at src[t·stride + off + s·dim].
func repeatForward(p *pool, out, src []float32, n, stride, off, srcHeads, heads, dim int) {
	rep := heads / srcHeads
	p.rows(n, grainFor(heads*dim), func(lo, hi int) {
		for t := lo; t < hi; t++ {
			for k := range heads {
				copy(out[(t*heads+k)*dim:][:dim], src[t*stride+off+(k/rep)*dim:][:dim])
			}
		}
	})
}

// repeatBackward writes into dsrc (laid out like repeatForward's src) the
// gradient of each source head: the sum, in head order, of the gradients
// of the heads repeated from it.
func repeatBackward(p *pool, dsrc, dout []float32, n, stride, off, srcHeads, heads, dim int) {
	rep := heads / srcHeads
	p.rows(n, grainFor(heads*dim), func(lo, hi int) {
		for t := lo; t < hi; t++ {
			for s := range srcHeads {
				dst := dsrc[t*stride+off+s*dim:][:dim]
				for j := range dim {
					var acc float64
					for k := s * rep; k < (s+1)*rep; k++ {
						acc += float64(dout[(t*heads+k)*dim+j])
					}
					dst[j] = float32(acc)
				}
			}
		}
	})
}

// copyCols copies cols columns of n rows: dst[t·dstStride + dstOff + j] =
// src[t·srcStride + srcOff + j].
func copyCols(p *pool, dst []float32, dstStride, dstOff int, src []float32, srcStride, srcOff, n, cols int) {
	p.rows(n, grainFor(cols), func(lo, hi int) {
		for t := lo; t < hi; t++ {
			copy(dst[t*dstStride+dstOff:][:cols], src[t*srcStride+srcOff:][:cols])
		}
	})
}
