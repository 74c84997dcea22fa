package model

import (
	"fmt"
	"slices"

	"github.com/matsurgery/matsurgery/kernels"
)

// arena is the group of a plan's activation tensors, allocated and freed
// together (kernels.Arena).
type arena = kernels.Arena

// seqPlan holds the activations of one sequence length n (batch 1): every
// buffer a decoder layer needs, allocated once and reused by every layer
// and every call with that length.
type seqPlan struct {
	n  int
	ar arena

	stream   [2]kernels.Tensor // [1,n,d]: the residual stream, ping-pong
	flat     [2]kernels.Tensor // [1,n·d] views of stream
	h        kernels.Tensor    // [1,n,d]: normed input of a sub-block
	mixOut   kernels.Tensor    // [1,n,d]: attention or mixer output
	mlpOut   kernels.Tensor    // [1,n,d]
	attn     *attnPlan
	mix      *mixerPlan
	up       kernels.Tensor // [1,n,inter] (Phi) or [1,n,2·inter] (gate|up)
	gate     kernels.Tensor // [1,n,inter] (gated MLP)
	lin      kernels.Tensor // [1,n,inter] (gated MLP)
	logits   kernels.Tensor // [1,n,vocab], allocated on first use
	last     kernels.Tensor // [1,1,d]: last row of the stream
	lastFlat kernels.Tensor // [1,d] view of last
	lastNorm kernels.Tensor // [1,1,d]
	lastLog  kernels.Tensor // [1,1,vocab]
}

// attnPlan holds an attention block's activations.
type attnPlan struct {
	qkv          kernels.Tensor // [1,n,dq+2dkv]
	qf, kf, vf   kernels.Tensor // [1,n,dq], [1,n,dkv]
	q, k, v      kernels.Tensor // views [1,n,H,P], [1,n,Hkv,P]
	out, outFlat kernels.Tensor // [1,n,H,P] and its [1,n,dq] view
	qOne, outOne kernels.Tensor // [1,H·P] views, for the decode fallback
}

// plan returns the activations for length n, allocating them on first use.
// Plans of other lengths are freed, except the single-token plan of decode
// steps.
func (m *Model) plan(n int) (*seqPlan, error) {
	if p, ok := m.plans[n]; ok {
		return p, nil
	}
	for k, p := range m.plans {
		if k != 1 {
			p.ar.Free()
			delete(m.plans, k)
			m.mm.release() // its bf16 copies were sized for that length too
		}
	}
	s := m.sizes
	p := &seqPlan{n: n, ar: *kernels.NewArena(m.be)}
	a := &p.ar
	for i := range p.stream {
		p.stream[i] = a.Alloc(1, n, s.d)
		p.flat[i] = a.View(p.stream[i], 1, n*s.d)
	}
	p.h, p.mixOut, p.mlpOut = a.Alloc(1, n, s.d), a.Alloc(1, n, s.d), a.Alloc(1, n, s.d)
	if s.gated {
		p.up = a.Alloc(1, n, 2*s.inter)
		p.gate, p.lin = a.Alloc(1, n, s.inter), a.Alloc(1, n, s.inter)
	} else {
		p.up = a.Alloc(1, n, s.inter)
	}
	p.last, p.lastNorm = a.Alloc(1, 1, s.d), a.Alloc(1, 1, s.d)
	p.lastFlat = a.View(p.last, 1, s.d)
	var mixCfg *mixer
	hasAttn := false
	for _, l := range m.layers {
		if l.mixer != nil {
			mixCfg = l.mixer
		} else {
			hasAttn = true
		}
	}
	if hasAttn {
		dq, dkv := s.heads*s.headDim, s.kvHeads*s.headDim
		ap := &attnPlan{qkv: a.Alloc(1, n, dq+2*dkv), qf: a.Alloc(1, n, dq), kf: a.Alloc(1, n, dkv), vf: a.Alloc(1, n, dkv)}
		ap.q = a.View(ap.qf, 1, n, s.heads, s.headDim)
		ap.k = a.View(ap.kf, 1, n, s.kvHeads, s.headDim)
		ap.v = a.View(ap.vf, 1, n, s.kvHeads, s.headDim)
		ap.out = a.Alloc(1, n, s.heads, s.headDim)
		ap.outFlat = a.View(ap.out, 1, n, dq)
		if n == 1 {
			ap.qOne, ap.outOne = a.View(ap.qf, 1, dq), a.View(ap.out, 1, dq)
		}
		p.attn = ap
	}
	if mixCfg != nil {
		// A layer runs its token mixer before its MLP, and a Mamba layer has
		// no attention: the attention block's and the MLP's buffers are free
		// while a mixer runs, and the mixer reuses those of its shapes.
		lend := &lender{}
		if p.attn != nil {
			lend.add(p.attn.qkv, p.attn.qf, p.attn.kf, p.attn.vf, p.attn.out)
		}
		lend.add(p.up, p.gate, p.lin, p.mlpOut)
		p.mix = newMixerPlan(a, mixCfg.cfg, n, m.mm.bf16, lend)
	}
	if a.Err() != nil {
		a.Free()
		return nil, fmt.Errorf("activations for %d tokens: %w", n, a.Err())
	}
	m.plans[n] = p
	return p, nil
}

// lender hands out tensors that are free while a Mamba mixer runs, each
// at most once, to mixer buffers of the same shape. Every buffer of the
// mixer, the attention block and the MLP is written before it is read
// within its layer, so sharing storage between them changes no result.
type lender struct{ free []kernels.Tensor }

func (l *lender) add(ts ...kernels.Tensor) {
	for _, t := range ts {
		if t != nil {
			l.free = append(l.free, t)
		}
	}
}

// take returns a free F32 tensor of exactly shape, or nil.
func (l *lender) take(shape ...int) kernels.Tensor {
	for i, t := range l.free {
		if t.DType() == kernels.F32 && slices.Equal(t.Shape(), shape) {
			l.free = slices.Delete(l.free, i, i+1)
			return t
		}
	}
	return nil
}

// logitsBuffer returns the plan's [1,n,vocab] logits, allocating it once.
func (m *Model) logitsBuffer(p *seqPlan) (kernels.Tensor, error) {
	if p.logits == nil {
		p.logits = p.ar.Alloc(1, p.n, m.sizes.vocab)
		if p.ar.Err() != nil {
			err := p.ar.Err()
			p.ar.ClearErr()
			return nil, fmt.Errorf("logits for %d tokens: %w", p.n, err)
		}
	}
	return p.logits, nil
}

func (m *Model) freePlans() {
	for k, p := range m.plans {
		p.ar.Free()
		delete(m.plans, k)
	}
	if m.vplan != nil {
		m.vplan.ar.Free()
		m.vplan = nil
	}
}
