package model

import (
	"fmt"

	"github.com/matsurgery/matsurgery/kernels"
)

// decodeState is what incremental decoding keeps between calls: for each
// attention layer its keys (after RoPE) and values [1, capacity, Hkv, P],
// rows 0…pos−1 valid; for each Mamba layer its conv and SSM states.
type decodeState struct {
	pos      int
	capacity int
	kv       []*kvCache    // per layer; nil for Mamba layers
	mamba    []*mixerState // per layer; nil for attention layers
}

// kvCache is one attention layer's cache.
type kvCache struct {
	k, v         kernels.Tensor // [1, capacity, Hkv, P]
	kFlat, vFlat kernels.Tensor // [1, capacity·Hkv·P] views
}

// resetDecode frees the decode state.
func (m *Model) resetDecode() {
	st := m.decoder
	m.decoder = nil
	if st == nil {
		return
	}
	for _, c := range st.kv {
		if c != nil {
			m.be.Free(c.k)
			m.be.Free(c.v)
		}
	}
	for _, s := range st.mamba {
		if s != nil {
			m.be.Free(s.conv)
			m.be.Free(s.ssm)
		}
	}
}

// newKV allocates an empty cache of the given capacity.
func (m *Model) newKV(capacity int) (*kvCache, error) {
	s := m.sizes
	c := &kvCache{}
	var err error
	if c.k, err = m.be.Alloc(kernels.F32, 1, capacity, s.kvHeads, s.headDim); err != nil {
		return nil, fmt.Errorf("kv cache of %d tokens: %w", capacity, err)
	}
	if c.v, err = m.be.Alloc(kernels.F32, 1, capacity, s.kvHeads, s.headDim); err != nil {
		m.be.Free(c.k)
		return nil, fmt.Errorf("kv cache of %d tokens: %w", capacity, err)
	}
	n := capacity * s.kvHeads * s.headDim
	if c.kFlat, err = m.be.Reshape(c.k, 1, n); err == nil {
		c.vFlat, err = m.be.Reshape(c.v, 1, n)
	}
	if err != nil {
		m.be.Free(c.k)
		m.be.Free(c.v)
		return nil, fmt.Errorf("kv cache view: %w", err)
	}
	return c, nil
}

// newDecodeState allocates caches for capacity tokens and zero Mamba states.
func (m *Model) newDecodeState(capacity int) (*decodeState, error) {
	st := &decodeState{capacity: capacity, kv: make([]*kvCache, len(m.layers)), mamba: make([]*mixerState, len(m.layers))}
	m.decoder = st // so that resetDecode frees a partial state
	for i, l := range m.layers {
		var err error
		if l.mixer != nil {
			st.mamba[i], err = l.mixer.newState(m.be)
		} else {
			st.kv[i], err = m.newKV(capacity)
		}
		if err != nil {
			m.resetDecode()
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
	}
	return st, nil
}

// reserve grows the KV caches (doubling) so that they hold need tokens.
func (m *Model) reserve(st *decodeState, need int) error {
	if need <= st.capacity {
		return nil
	}
	capacity := max(need, 2*st.capacity)
	for i, c := range st.kv {
		if c == nil {
			continue
		}
		nc, err := m.newKV(capacity)
		if err != nil {
			return fmt.Errorf("layer %d: grow: %w", i, err)
		}
		if err := m.rows.copy(nc.k, 0, c.k, 0, st.pos*m.sizes.kvHeads); err == nil {
			err = m.rows.copy(nc.v, 0, c.v, 0, st.pos*m.sizes.kvHeads)
		}
		if err != nil {
			m.be.Free(nc.k)
			m.be.Free(nc.v)
			return fmt.Errorf("layer %d: grow: %w", i, err)
		}
		m.be.Free(c.k)
		m.be.Free(c.v)
		st.kv[i] = nc
	}
	st.capacity = capacity
	return nil
}

// appendKV writes the n new keys and values [1,n,Hkv,P] at rows pos… of
// layer l's cache (rows of the copy are single heads: [Hkv·n, P]).
func (st *decodeState) appendKV(rows *rowMover, l int, k, v kernels.Tensor, pos, n int) error {
	c := st.kv[l]
	hkv := k.Shape()[2]
	if err := rows.copy(c.k, pos*hkv, k, 0, n*hkv); err != nil {
		return fmt.Errorf("kv cache keys: %w", err)
	}
	if err := rows.copy(c.v, pos*hkv, v, 0, n*hkv); err != nil {
		return fmt.Errorf("kv cache values: %w", err)
	}
	return nil
}

// cachedAttention attends the plan's queries (positions pos…) to the
// first pos+n cached rows. Without kernels.CachedAttention (one query
// only) it copies the visible keys and values out of the cache, repeats
// the query over them and runs non-causal SoftmaxAttention, whose rows are
// then all the answer: O(pos²) per step instead of O(pos).
func (m *Model) cachedAttention(ap *attnPlan, c *kvCache, pos int, scale float32) error {
	if m.att != nil {
		return m.att.SoftmaxAttentionCached(ap.out, ap.q, c.k, c.v, pos, scale)
	}
	n := ap.q.Shape()[1]
	if n != 1 || ap.qOne == nil {
		return fmt.Errorf("the backend has no cached attention: decode one token at a time")
	}
	s := m.sizes
	vis, dq, dkv := pos+1, s.heads*s.headDim, s.kvHeads*s.headDim
	ar := *kernels.NewArena(m.be)
	defer ar.Free()
	kp, vp := ar.Alloc(1, vis, s.kvHeads, s.headDim), ar.Alloc(1, vis, s.kvHeads, s.headDim)
	qr, full := ar.Alloc(1, vis, s.heads, s.headDim), ar.Alloc(1, vis, s.heads, s.headDim)
	kpf, vpf := ar.View(kp, 1, vis*dkv), ar.View(vp, 1, vis*dkv)
	qrf, fullf := ar.View(qr, 1, vis*dq), ar.View(full, 1, vis*dq)
	if ar.Err() != nil {
		return ar.Err()
	}
	if err := m.be.SliceCols(kpf, c.kFlat, 0); err != nil {
		return fmt.Errorf("visible keys: %w", err)
	}
	if err := m.be.SliceCols(vpf, c.vFlat, 0); err != nil {
		return fmt.Errorf("visible values: %w", err)
	}
	if err := m.be.RepeatHeads(qrf, ap.qOne, 1, vis, dq); err != nil {
		return fmt.Errorf("repeat query: %w", err)
	}
	if err := m.be.SoftmaxAttention(full, qr, kp, vp, scale, false); err != nil {
		return err
	}
	if err := m.be.SliceCols(ap.outOne, fullf, 0); err != nil {
		return fmt.Errorf("attention row: %w", err)
	}
	return nil
}

// Prefill starts incremental decoding: it drops any previous decode
// state, runs the prompt (as Forward takes it) and returns the logits of
// its last position [vocab] on the host. The caches hold the prompt plus
// Options.DecodeReserve tokens before they grow.
func (m *Model) Prefill(pixels []float32, ids []int) ([]float32, error) {
	if err := m.alive(); err != nil {
		return nil, err
	}
	var logits []float32
	err := kernels.RunPinned(m.be, func() (err error) {
		logits, err = m.prefill(pixels, ids)
		return err
	})
	if err != nil {
		m.resetDecode()
		return nil, fmt.Errorf("model: prefill: %w", err)
	}
	return logits, nil
}

func (m *Model) prefill(pixels []float32, ids []int) ([]float32, error) {
	m.resetDecode()
	p, err := m.prepare(pixels, ids)
	if err != nil {
		return nil, err
	}
	st, err := m.newDecodeState(p.n + m.opts.DecodeReserve)
	if err != nil {
		return nil, err
	}
	cur, err := m.runLayers(p, st, nil)
	if err != nil {
		return nil, err
	}
	st.pos = p.n
	d := m.sizes.d
	if err := m.be.SliceCols(p.lastFlat, p.flat[cur], (p.n-1)*d); err != nil {
		return nil, fmt.Errorf("last row: %w", err)
	}
	return m.hostLogits(p, p.last)
}

// hostLogits applies the head to x [1,1,d] and downloads the logits.
func (m *Model) hostLogits(p *seqPlan, x kernels.Tensor) ([]float32, error) {
	if p.lastLog == nil {
		p.lastLog = p.ar.Alloc(1, 1, m.sizes.vocab)
		if err := p.ar.Err(); err != nil {
			p.ar.ClearErr()
			p.lastLog = nil
			return nil, fmt.Errorf("logits: %w", err)
		}
	}
	if err := m.lmHead(p.lastNorm, x, p.lastLog); err != nil {
		return nil, err
	}
	if err := m.be.Sync(); err != nil {
		return nil, err
	}
	return m.be.Download(p.lastLog)
}

// Step appends one token to the decode state started by Prefill and
// returns its logits [vocab] on the host.
func (m *Model) Step(id int) ([]float32, error) {
	if err := m.alive(); err != nil {
		return nil, err
	}
	st := m.decoder
	if st == nil {
		return nil, fmt.Errorf("model: step: no decode state: call Prefill first")
	}
	if id < 0 || id >= m.sizes.vocab {
		return nil, fmt.Errorf("model: step: token id %d is outside the vocabulary [0, %d)", id, m.sizes.vocab)
	}
	var logits []float32
	err := kernels.RunPinned(m.be, func() (err error) {
		logits, err = m.step(st, id)
		return err
	})
	if err != nil {
		// A failed step may have half-updated the caches.
		m.resetDecode()
		return nil, fmt.Errorf("model: step at position %d: %w (decode state dropped)", st.pos, err)
	}
	return logits, nil
}

func (m *Model) step(st *decodeState, id int) ([]float32, error) {
	if err := m.reserve(st, st.pos+1); err != nil {
		return nil, err
	}
	p, err := m.plan(1)
	if err != nil {
		return nil, err
	}
	if err := m.rows.gather(p.stream[0], m.embed, []int32{int32(id)}); err != nil {
		return nil, fmt.Errorf("token embedding: %w", err)
	}
	cur, err := m.runLayers(p, st, nil)
	if err != nil {
		return nil, err
	}
	st.pos++
	return m.hostLogits(p, p.stream[cur])
}

// Pos is the number of positions in the decode state (0 before Prefill).
func (m *Model) Pos() int {
	if m.decoder == nil {
		return 0
	}
	return m.decoder.pos
}
