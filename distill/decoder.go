package distill

import "math"

// textSizes are the decoder's dimensions, read once from the config.
type textSizes struct {
	d, heads, kvHeads, headDim, inter, vocab int
	rotary                                   int
	theta, eps                               float64
	parallel                                 bool // Phi's parallel block
	gated                                    bool // SwiGLU MLP (gate | up fused, down)
	act                                      geluKind
	rms                                      bool // RMSNorm (else LayerNorm with bias)
}

func (s textSizes) dq() int  { return s.heads * s.headDim }
func (s textSizes) dkv() int { return s.kvHeads * s.headDim }

// norm is a frozen LayerNorm (weight, bias) or RMSNorm (weight).
type norm struct {
	w, b []float32
	rms  bool
	eps  float64
}

// normStats are what a norm's backward needs: the row means (LayerNorm)
// and reciprocal standard deviations.
type normStats struct{ mean, rstd []float64 }

func (nm norm) forward(p *pool, y, x []float32, n, d int) normStats {
	st := normStats{rstd: make([]float64, n)}
	if nm.rms {
		rmsNormForward(p, y, x, n, d, nm.w, nm.eps, st.rstd)
		return st
	}
	st.mean = make([]float64, n)
	layerNormForward(p, y, x, n, d, nm.w, nm.b, nm.eps, st.mean, st.rstd)
	return st
}

// backward adds the input gradient to dx.
func (nm norm) backward(p *pool, dx, dy, x []float32, n, d int, st normStats) {
	if nm.rms {
		rmsNormBackward(p, dx, dy, x, n, d, nm.w, st.rstd)
		return
	}
	layerNormBackward(p, dx, dy, x, n, d, nm.w, st.mean, st.rstd)
}

// decoderLayer is one LLM layer: frozen attention (qkv fused, o) or a
// trainable Mamba-2 mixer, and the frozen MLP (up is fc1, or gate|up fused
// for SwiGLU; down is fc2 or down_proj). postNorm is unused by Phi's
// parallel block.
type decoderLayer struct {
	index            int
	inNorm, postNorm norm
	qkv, o           linear
	mixer            *mixer
	up, down         linear
}

// layerActs are one decoder layer's activations for n tokens.
type layerActs struct {
	n   int
	x   []float32 // input [n, d] (the caller's)
	n1  normStats
	h   []float32 // input norm's output (dropped after the forward: only the mixer, which keeps its own reference, reads it)
	qkv []float32 // attention: q and k after RoPE, v [n, dq+2·dkv]
	att []float32 // attention output before o [n, dq]
	lse []float64 // attention log-sum-exp [heads·n]
	mix *mixerActs
	mid []float32 // Llama/Qwen2: x + token mixer output
	n2  normStats
	h2  []float32 // post-attention norm's output (dropped after the forward: the MLP is frozen)
	up  []float32 // MLP up projection before the activation
	// Residual dropout's masks on the token mixer's and the MLP's outputs
	// (nil: none).
	dropMix, dropMLP *dropMask
}

// attnShape is the attention of this model over the fused qkv buffer.
func (s textSizes) attnShape(n int) attnShape {
	return attnShape{n: n, heads: s.heads, kvHeads: s.kvHeads, headDim: s.headDim,
		stride: s.dq() + 2*s.dkv(), qOff: 0, kOff: s.dq(), vOff: s.dq() + s.dkv(),
		scale: float32(1 / math.Sqrt(float64(s.headDim))), causal: true}
}

// layerForward runs decoder layer l on x [n, d] into out [n, d]:
//
//	Phi:          h = LN(x); out = x + mix(h) + fc2(act(fc1(h)))
//	Llama/Qwen2:  mid = x + mix(RMS₁(x)); out = mid + down(silu(gate(h₂))·up(h₂)), h₂ = RMS₂(mid)
//
// where mix is the attention (q, k, v, RoPE on the first rotary dims,
// causal softmax with scale 1/√head_dim, o) or the Mamba-2 mixer. With
// drop, mix(·) and the MLP's output are each multiplied by their residual
// dropout mask before the sums. It returns the activations backward needs
// (save asks the mixer to keep its scan states).
func layerForward(p *pool, s textSizes, l *decoderLayer, rope *ropeTable, out, x []float32, n int, save bool, drop *layerDropout) *layerActs {
	d := s.d
	a := &layerActs{n: n, x: x}
	a.dropMix, a.dropMLP = drop.masks(p, l.index, n, d)
	a.h = make([]float32, n*d)
	a.n1 = l.inNorm.forward(p, a.h, x, n, d)
	mixOut := make([]float32, n*d)
	tokenMixerForward(p, s, l, a, rope, mixOut, save)
	if a.dropMix != nil {
		a.dropMix.apply(p, mixOut)
	}
	src := a.h
	if !s.parallel {
		a.mid = make([]float32, n*d)
		for i := range a.mid {
			a.mid[i] = x[i] + mixOut[i]
		}
		a.h2 = make([]float32, n*d)
		a.n2 = l.postNorm.forward(p, a.h2, a.mid, n, d)
		src = a.h2
	}
	mlpOut := make([]float32, n*d)
	mlpForward(p, s, l, a, src, mlpOut)
	if a.dropMLP != nil {
		a.dropMLP.apply(p, mlpOut)
	}
	if s.parallel {
		for i := range out[:n*d] {
			out[i] = x[i] + mixOut[i] + mlpOut[i]
		}
	} else {
		for i := range out[:n*d] {
			out[i] = a.mid[i] + mlpOut[i]
		}
	}
	a.h, a.h2 = nil, nil
	return a
}

func tokenMixerForward(p *pool, s textSizes, l *decoderLayer, a *layerActs, rope *ropeTable, mixOut []float32, save bool) {
	n := a.n
	if l.mixer != nil {
		a.mix = l.mixer.forward(p, mixOut, a.h, n, save)
		return
	}
	sh := s.attnShape(n)
	a.qkv = make([]float32, n*sh.stride)
	l.qkv.forward(p, a.qkv, a.h, n)
	ropeRotate(p, a.qkv, n, sh.stride, sh.qOff, s.heads, s.headDim, rope, false)
	ropeRotate(p, a.qkv, n, sh.stride, sh.kOff, s.kvHeads, s.headDim, rope, false)
	a.att = make([]float32, n*s.dq())
	a.lse = make([]float64, s.heads*n)
	attentionForward(p, sh, a.att, a.qkv, a.lse)
	l.o.forward(p, mixOut, a.att, n)
}

func mlpForward(p *pool, s textSizes, l *decoderLayer, a *layerActs, src, mlpOut []float32) {
	n := a.n
	if s.gated {
		a.up = make([]float32, n*2*s.inter)
		l.up.forward(p, a.up, src, n)
		act := make([]float32, n*s.inter)
		swigluForward(p, act, a.up, n, s.inter)
		l.down.forward(p, mlpOut, act, n)
		return
	}
	a.up = make([]float32, n*s.inter)
	l.up.forward(p, a.up, src, n)
	act := make([]float32, n*s.inter)
	geluForward(p, s.act, act, a.up)
	l.down.forward(p, mlpOut, act, n)
}

// layerBackward backpropagates dout [n, d] through decoder layer l:
// the mixer's parameter gradients are accumulated and, when dx is not
// nil, the gradient of the layer's input is written into dx. Frozen
// weights get no gradients. With dx nil only what leads to the mixer is
// computed (the layer-term branch, whose input is the teacher's).
func layerBackward(p *pool, s textSizes, l *decoderLayer, a *layerActs, rope *ropeTable, dx, dout []float32) {
	n, d := a.n, s.d
	if dx == nil && l.mixer == nil {
		return
	}
	if s.parallel {
		dmix := a.dropMix.masked(p, dout)
		if dx == nil {
			l.mixer.backward(p, nil, dmix, a.mix)
			return
		}
		dh := make([]float32, n*d)
		tokenMixerBackward(p, s, l, a, rope, dh, dmix)
		mlpBackward(p, s, l, a, dh, a.dropMLP.masked(p, dout))
		copy(dx, dout[:n*d])
		l.inNorm.backward(p, dx, dh, a.x, n, d, a.n1)
		return
	}
	dmid := make([]float32, n*d)
	copy(dmid, dout[:n*d])
	dh2 := make([]float32, n*d)
	mlpBackward(p, s, l, a, dh2, a.dropMLP.masked(p, dout))
	l.postNorm.backward(p, dmid, dh2, a.mid, n, d, a.n2)
	dmix := a.dropMix.masked(p, dmid)
	if dx == nil {
		l.mixer.backward(p, nil, dmix, a.mix)
		return
	}
	dh := make([]float32, n*d)
	tokenMixerBackward(p, s, l, a, rope, dh, dmix)
	copy(dx, dmid)
	l.inNorm.backward(p, dx, dh, a.x, n, d, a.n1)
}

// tokenMixerBackward adds to dh the gradient of the token mixer's input
// given dmix, the gradient of its output.
func tokenMixerBackward(p *pool, s textSizes, l *decoderLayer, a *layerActs, rope *ropeTable, dh, dmix []float32) {
	n := a.n
	if l.mixer != nil {
		l.mixer.backward(p, dh, dmix, a.mix)
		return
	}
	sh := s.attnShape(n)
	datt := make([]float32, n*s.dq())
	l.o.backward(p, datt, dmix, n)
	dqkv := make([]float32, n*sh.stride)
	attentionBackward(p, sh, dqkv, datt, a.att, a.qkv, a.lse)
	ropeRotate(p, dqkv, n, sh.stride, sh.qOff, s.heads, s.headDim, rope, true)
	ropeRotate(p, dqkv, n, sh.stride, sh.kOff, s.kvHeads, s.headDim, rope, true)
	l.qkv.backward(p, dh, dqkv, n)
}

// mlpBackward adds to dsrc the gradient of the MLP's input given dmlp.
func mlpBackward(p *pool, s textSizes, l *decoderLayer, a *layerActs, dsrc, dmlp []float32) {
	n := a.n
	dact := make([]float32, n*s.inter)
	l.down.backward(p, dact, dmlp, n)
	if s.gated {
		dup := make([]float32, n*2*s.inter)
		swigluBackward(p, dup, dact, a.up, n, s.inter)
		l.up.backward(p, dsrc, dup, n)
		return
	}
	geluBackward(p, s.act, dact, dact, a.up)
	l.up.backward(p, dsrc, dact, n)
}

// headActs are the final norm's activations.
type headActs struct {
	x  []float32 // last layer's output [n, d]
	st normStats
}

// headForward applies the final norm and the lm_head to x [n, d], writing
// logits [n, vocab].
func headForward(p *pool, s textSizes, final norm, head linear, logits, x []float32, n int) *headActs {
	h := make([]float32, n*s.d)
	st := final.forward(p, h, x, n, s.d)
	head.forward(p, logits, h, n)
	return &headActs{x: x, st: st}
}

// headBackward writes into dx the gradient of the final norm's input given
// dlogits.
func headBackward(p *pool, s textSizes, final norm, head linear, a *headActs, dx, dlogits []float32, n int) {
	dh := make([]float32, n*s.d)
	head.backward(p, dh, dlogits, n)
	clear(dx[:n*s.d])
	final.backward(p, dx, dh, a.x, n, s.d, a.st)
}
