package model

import (
	"fmt"
	"math"

	"github.com/matsurgery/matsurgery/kernels"
)

// linear is a PyTorch Linear: y = x·wᵀ + b (b may be nil).
type linear struct {
	w   kernels.Tensor // [out, in], F32 or BF16
	b   kernels.Tensor // [out] or nil
	out int
}

func (l linear) apply(be kernels.Backend, y, x kernels.Tensor) error {
	if err := be.MatMul(y, x, l.w, true); err != nil {
		return err
	}
	if l.b != nil {
		return be.AddBias(y, l.b)
	}
	return nil
}

// norm is a LayerNorm (weight, bias) or an RMSNorm (weight).
type norm struct {
	w, b kernels.Tensor
	rms  bool
	eps  float32
}

func (n norm) apply(be kernels.Backend, y, x kernels.Tensor) error {
	if n.rms {
		return be.RMSNorm(y, x, n.w, n.eps)
	}
	return be.LayerNorm(y, x, n.w, n.b, n.eps)
}

// decoderLayer is one LLM layer: attention (qkv, o) or a Mamba-2 mixer,
// and the MLP (up is fc1, or gate|up fused for SwiGLU; down is fc2 or
// down_proj). postNorm is unused by Phi's parallel block.
type decoderLayer struct {
	index            int
	inNorm, postNorm norm
	qkv, o           linear
	mixer            *mixer
	up, down         linear
}

// LayerHook sees decoder layer l's input and output [1, L, hidden] during
// ForwardHooked; both belong to the Model and are valid only during the
// call (copy them to keep them). An error stops the forward pass.
type LayerHook func(layer int, input, output kernels.Tensor) error

// layerForward runs decoder layer l on in into out ([1,n,d], distinct).
// st is nil for a stateless pass; otherwise the layer reads and extends
// the decode caches at position st.pos.
func (m *Model) layerForward(l *decoderLayer, p *seqPlan, in, out kernels.Tensor, st *decodeState) error {
	be := m.be
	s := m.sizes
	if err := l.inNorm.apply(be, p.h, in); err != nil {
		return fmt.Errorf("input norm: %w", err)
	}
	if err := m.tokenMixer(l, p, st); err != nil {
		return err
	}
	if err := be.Add(out, in, p.mixOut); err != nil {
		return fmt.Errorf("residual: %w", err)
	}
	if !s.parallel {
		// Llama/Qwen2: x + attn(LN1 x), then + mlp(LN2 ·).
		if err := l.postNorm.apply(be, p.h, out); err != nil {
			return fmt.Errorf("post-attention norm: %w", err)
		}
	}
	// Phi's parallel block reuses h = LN(x) for the MLP.
	if err := m.mlp(l, p); err != nil {
		return err
	}
	if err := be.Add(out, out, p.mlpOut); err != nil {
		return fmt.Errorf("mlp residual: %w", err)
	}
	return nil
}

// tokenMixer writes p.mixOut from p.h: attention or the Mamba-2 mixer.
func (m *Model) tokenMixer(l *decoderLayer, p *seqPlan, st *decodeState) error {
	if l.mixer != nil {
		var ms *mixerState
		pos := 0
		if st != nil {
			ms, pos = st.mamba[l.index], st.pos
		}
		return l.mixer.forward(m.mm, m.rows, p.mix, p.h, p.mixOut, ms, pos, !m.opts.Recurrence)
	}
	if err := m.attention(l, p, st); err != nil {
		return fmt.Errorf("attention: %w", err)
	}
	return nil
}

// attention: q, k, v projections (one fused MatMul), RoPE on the first
// rotary dims from the current position, causal softmax attention with
// scale 1/√head_dim (against the KV cache when decoding), output
// projection.
func (m *Model) attention(l *decoderLayer, p *seqPlan, st *decodeState) error {
	be, s, ap := m.be, m.sizes, p.attn
	dq, dkv := s.heads*s.headDim, s.kvHeads*s.headDim
	if err := m.mm.linear(l.qkv, ap.qkv, p.h); err != nil {
		return fmt.Errorf("q/k/v projections: %w", err)
	}
	for _, part := range []struct {
		t    kernels.Tensor
		col0 int
	}{{ap.qf, 0}, {ap.kf, dq}, {ap.vf, dq + dkv}} {
		if err := be.SliceCols(part.t, ap.qkv, part.col0); err != nil {
			return fmt.Errorf("split q/k/v: %w", err)
		}
	}
	pos := 0
	if st != nil {
		pos = st.pos
	}
	if err := be.RoPE(ap.q, s.rotary, s.theta, pos); err != nil {
		return fmt.Errorf("rope q: %w", err)
	}
	if err := be.RoPE(ap.k, s.rotary, s.theta, pos); err != nil {
		return fmt.Errorf("rope k: %w", err)
	}
	scale := float32(1 / math.Sqrt(float64(s.headDim)))
	qa, ka, va, err := m.mm.attentionOperands(ap.q, ap.k, ap.v)
	if err != nil {
		return err
	}
	if st == nil || pos == 0 {
		if err := be.SoftmaxAttention(ap.out, qa, ka, va, scale, true); err != nil {
			return err
		}
		if st != nil {
			if err := st.appendKV(m.rows, l.index, ap.k, ap.v, 0, p.n); err != nil {
				return err
			}
		}
	} else {
		if err := st.appendKV(m.rows, l.index, ap.k, ap.v, pos, p.n); err != nil {
			return err
		}
		if err := m.cachedAttention(ap, st.kv[l.index], pos, scale); err != nil {
			return err
		}
	}
	if err := m.mm.linear(l.o, p.mixOut, ap.outFlat); err != nil {
		return fmt.Errorf("output projection: %w", err)
	}
	return nil
}

// mlp writes p.mlpOut from p.h: fc2(act(fc1 h)) or down(silu(gate h)·up h).
func (m *Model) mlp(l *decoderLayer, p *seqPlan) error {
	be, s := m.be, m.sizes
	if err := m.mm.linear(l.up, p.up, p.h); err != nil {
		return fmt.Errorf("mlp up projection: %w", err)
	}
	act := p.up
	if s.gated {
		if err := be.SliceCols(p.gate, p.up, 0); err != nil {
			return fmt.Errorf("mlp split gate: %w", err)
		}
		if err := be.SliceCols(p.lin, p.up, s.inter); err != nil {
			return fmt.Errorf("mlp split up: %w", err)
		}
		if err := be.SiLU(p.gate, p.gate); err != nil {
			return fmt.Errorf("mlp silu: %w", err)
		}
		if err := be.Mul(p.gate, p.gate, p.lin); err != nil {
			return fmt.Errorf("mlp gate product: %w", err)
		}
		act = p.gate
	} else if err := be.GELU(p.up, p.up, s.act); err != nil {
		return fmt.Errorf("mlp gelu: %w", err)
	}
	if err := m.mm.linear(l.down, p.mlpOut, act); err != nil {
		return fmt.Errorf("mlp down projection: %w", err)
	}
	return nil
}

// runLayers runs every decoder layer over the plan's stream, starting
// from stream[0], and returns the index of the buffer holding the last
// layer's output.
func (m *Model) runLayers(p *seqPlan, st *decodeState, hook LayerHook) (int, error) {
	cur := 0
	for i, l := range m.layers {
		in, out := p.stream[cur], p.stream[1-cur]
		if err := m.layerForward(l, p, in, out, st); err != nil {
			return 0, fmt.Errorf("layer %d: %w", i, err)
		}
		if hook != nil {
			if err := hook(i, in, out); err != nil {
				return 0, fmt.Errorf("layer %d hook: %w", i, err)
			}
		}
		cur = 1 - cur
	}
	return cur, nil
}

// lmHead applies the final norm and the head to x [1,rows,d] into logits.
func (m *Model) lmHead(h, x, logits kernels.Tensor) error {
	if err := m.final.apply(m.be, h, x); err != nil {
		return fmt.Errorf("final norm: %w", err)
	}
	if err := m.mm.linear(m.head, logits, h); err != nil {
		return fmt.Errorf("lm_head: %w", err)
	}
	return nil
}
