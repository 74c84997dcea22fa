package distill

import (
	"errors"
	"fmt"
	"slices"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/layout"
)

// Training every parameter (TrainOptions.TrainAll): a plain TinyLLaVA
// checkpoint (or a hybrid) whose decoder — embeddings, every layer's norms,
// attention (or Mamba-2 mixer) and MLP, the final norm and the head — and
// connector all train, on the cross-entropy of the answers. The vision tower
// stays frozen. This is how the examples make a small teacher that answers
// well; it is not part of MaTVLM's recipe, which trains the mixers only.
//
// It reuses the Student's loaded blocks with every matrix widened to
// float32 (Options.F32Weights) and wraps each checkpoint tensor as a Param
// over its rows of the fused buffers (q|k|v, gate|up), so the optimiser's
// in-place updates are what the next forward reads. The forward keeps every
// activation a weight gradient needs (the norms' outputs and the MLP's
// activation, which the mixers-only backward drops).

// fullModel is a Student set up to train everything.
type fullModel struct {
	s      *Student
	params []*Param
	layers []fullGrads
	embedG []float32 // [vocab, d]; the head's gradient too when tied
	headG  []float32 // [vocab, d] (nil when tied)
	headBG []float32
	finalG normGrads
}

// normGrads are a norm's weight and bias gradient buffers (bias nil for
// RMSNorm).
type normGrads struct{ w, b []float32 }

// fullGrads are one decoder layer's gradient buffers, laid out like the
// fused weights they belong to.
type fullGrads struct {
	in, post       normGrads
	qkv, qkvB      []float32
	o, oB          []float32
	up, upB        []float32
	down, downB    []float32
	hasQKVBiasPart []bool
}

// loadFull loads dir (a plain teacher or a hybrid) with every decoder
// tensor and the connector trainable.
func loadFull(dir string, opts Options) (*fullModel, error) {
	opts.F32Weights = true
	opts.FreezeConnector = false
	if opts.Chunk == 0 {
		opts.Chunk = DefaultChunk
	}
	cfg, err := formats.ReadModelConfig(dir)
	if err != nil {
		return nil, fmt.Errorf("distill: load %s: %w", dir, err)
	}
	hybrid, ok, err := formats.ReadMambaConfig(dir)
	if err != nil {
		return nil, fmt.Errorf("distill: load %s: %w", dir, err)
	}
	sizes, err := textSizesOf(cfg)
	if err != nil {
		return nil, fmt.Errorf("distill: load %s: %w", dir, err)
	}
	if !ok {
		// A plain teacher: every layer is an attention layer.
		hybrid = &formats.MambaConfig{NLayer: cfg.Text.NumLayers, DModel: sizes.d}
		for l := range cfg.Text.NumLayers {
			hybrid.AttnLayers = append(hybrid.AttnLayers, l)
		}
	}
	ck, err := formats.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("distill: load %s: %w", dir, err)
	}
	defer ck.Close()
	s := &Student{Config: cfg, Hybrid: hybrid, Dir: dir, opts: opts, pool: newPool(opts.Workers), sizes: sizes}
	if err := s.load(&loader{ck: ck, f32: true}); err != nil {
		return nil, fmt.Errorf("distill: load %s: %w", dir, err)
	}
	f := &fullModel{s: s}
	if err := f.wrap(ck); err != nil {
		return nil, fmt.Errorf("distill: load %s: %w", dir, err)
	}
	s.params = f.params
	return f, nil
}

// wrap makes a Param of every checkpoint tensor the decoder and connector
// use, in checkpoint naming, over the loaded buffers.
func (f *fullModel) wrap(ck *formats.Checkpoint) error {
	s, z := f.s, f.s.sizes
	desc, err := layout.For(s.Config.Family)
	if err != nil {
		return err
	}
	add := func(name string, data, grad []float32, shape ...int) error {
		if _, ok := ck.Tensor(name); !ok {
			return nil // a part the loader filled with zeros (a missing bias)
		}
		p, err := newParam(name, data, shape...)
		if err != nil {
			return err
		}
		p.Grad = grad
		f.params = append(f.params, p)
		return nil
	}
	for _, lin := range []*trainableLinear{&s.conn.fc1, &s.conn.fc2} {
		f.params = append(f.params, lin.w)
		if lin.b != nil {
			f.params = append(f.params, lin.b)
		}
	}
	f.embedG = make([]float32, z.vocab*z.d)
	if err := add(desc.ModelTensor(layout.Embed, "weight"), s.embed.f32, f.embedG, z.vocab, z.d); err != nil {
		return err
	}
	// A linear part: rows [r0, r0+rows) of a fused weight and its bias.
	part := func(stem string, w, gw []float32, b, gb []float32, r0, rows, cols int) error {
		if err := add(stem+".weight", w[r0*cols:(r0+rows)*cols], gw[r0*cols:(r0+rows)*cols], rows, cols); err != nil {
			return err
		}
		if b != nil {
			return add(stem+".bias", b[r0:r0+rows], gb[r0:r0+rows], rows)
		}
		return nil
	}
	normParams := func(stem string, nm norm, g *normGrads) error {
		g.w = make([]float32, len(nm.w))
		if err := add(stem+".weight", nm.w, g.w, len(nm.w)); err != nil {
			return err
		}
		if nm.b != nil {
			g.b = make([]float32, len(nm.b))
			return add(stem+".bias", nm.b, g.b, len(nm.b))
		}
		return nil
	}
	grads := func(l linear) ([]float32, []float32) {
		gw := make([]float32, len(l.w.f32))
		var gb []float32
		if l.b != nil {
			gb = make([]float32, len(l.b))
		}
		return gw, gb
	}
	f.layers = make([]fullGrads, len(s.layers))
	for i, l := range s.layers {
		g := &f.layers[i]
		stem := func(p layout.Part) string { return fmt.Sprintf("%s%d.%s", layout.LayerPrefix, i, desc.Layer[p]) }
		if err := normParams(stem(layout.InputNorm), l.inNorm, &g.in); err != nil {
			return err
		}
		if !z.parallel {
			if err := normParams(stem(layout.PostNorm), l.postNorm, &g.post); err != nil {
				return err
			}
		}
		if l.mixer != nil {
			f.params = append(f.params, l.mixer.params()...)
		} else {
			g.qkv, g.qkvB = grads(l.qkv)
			rows := []int{z.dq(), z.dkv(), z.dkv()}
			r0 := 0
			for k, p := range []layout.Part{layout.AttnQ, layout.AttnK, layout.AttnV} {
				if err := part(stem(p), l.qkv.w.f32, g.qkv, l.qkv.b, g.qkvB, r0, rows[k], z.d); err != nil {
					return err
				}
				r0 += rows[k]
			}
			g.o, g.oB = grads(l.o)
			if err := part(stem(layout.AttnO), l.o.w.f32, g.o, l.o.b, g.oB, 0, z.d, z.dq()); err != nil {
				return err
			}
		}
		g.up, g.upB = grads(l.up)
		if z.gated {
			if err := part(stem(layout.MLPGate), l.up.w.f32, g.up, l.up.b, g.upB, 0, z.inter, z.d); err != nil {
				return err
			}
			if err := part(stem(layout.MLPUp), l.up.w.f32, g.up, l.up.b, g.upB, z.inter, z.inter, z.d); err != nil {
				return err
			}
		} else if err := part(stem(layout.MLPUp), l.up.w.f32, g.up, l.up.b, g.upB, 0, z.inter, z.d); err != nil {
			return err
		}
		g.down, g.downB = grads(l.down)
		if err := part(stem(layout.MLPDown), l.down.w.f32, g.down, l.down.b, g.downB, 0, z.d, z.inter); err != nil {
			return err
		}
	}
	if err := normParams(desc.Model[layout.FinalNorm], s.final, &f.finalG); err != nil {
		return err
	}
	if len(s.head.w.f32) > 0 && &s.head.w.f32[0] == &s.embed.f32[0] {
		f.headG = f.embedG // tied: the head's gradient adds to the embeddings'
	} else {
		f.headG, f.headBG = grads(s.head)
		if err := part(desc.Model[layout.LMHead], s.head.w.f32, f.headG, s.head.b, f.headBG, 0, z.vocab, z.d); err != nil {
			return err
		}
	}
	// Every buffer is zeroed through the Params, but the parts no Param
	// covers (zero-filled biases) must not grow: ZeroGrad clears them too.
	return nil
}

// zeroGrad clears every gradient buffer.
func (f *fullModel) zeroGrad() {
	for _, p := range f.params {
		p.ZeroGrad()
	}
	clear(f.embedG)
	clear(f.headG)
	clear(f.headBG)
	for _, g := range []*normGrads{&f.finalG} {
		clear(g.w)
		clear(g.b)
	}
	for i := range f.layers {
		g := &f.layers[i]
		for _, b := range [][]float32{g.in.w, g.in.b, g.post.w, g.post.b, g.qkv, g.qkvB, g.o, g.oB, g.up, g.upB, g.down, g.downB} {
			clear(b)
		}
	}
}

// fullActs are one decoder layer's activations for the full backward.
type fullActs struct {
	*layerActs
	h, h2, act []float32
}

// fullPass is one forward pass of the full model.
type fullPass struct {
	n      int
	ids    []int
	logits []float32
	rope   *ropeTable
	layers []fullActs
	images []imageActs
	hx     []float32 // last layer's output
	hn     []float32 // final norm's output
	hst    normStats
}

// forward runs the model on ids and pixels, saving every activation.
func (f *fullModel) forward(ids []int, pixels []float32) (*fullPass, error) {
	s, z := f.s, f.s.sizes
	embeds, images, err := s.embeds(Input{IDs: ids, Pixels: pixels}, true)
	if err != nil {
		return nil, fmt.Errorf("distill: forward: %w", err)
	}
	d := z.d
	n := len(embeds) / d
	fp := &fullPass{n: n, ids: ids, rope: s.ropeFor(n), images: images, layers: make([]fullActs, len(s.layers))}
	x := embeds
	for i, l := range s.layers {
		out := make([]float32, n*d)
		fp.layers[i] = fullLayerForward(s.pool, z, l, fp.rope, out, x, n)
		x = out
	}
	fp.hx = x
	fp.hn = make([]float32, n*d)
	fp.hst = s.final.forward(s.pool, fp.hn, x, n, d)
	fp.logits = make([]float32, n*z.vocab)
	s.head.forward(s.pool, fp.logits, fp.hn, n)
	return fp, nil
}

// fullLayerForward is layerForward keeping the norms' outputs and the
// MLP's activation.
func fullLayerForward(p *pool, s textSizes, l *decoderLayer, rope *ropeTable, out, x []float32, n int) fullActs {
	d := s.d
	a := fullActs{layerActs: &layerActs{n: n, x: x}}
	a.h = make([]float32, n*d)
	a.n1 = l.inNorm.forward(p, a.h, x, n, d)
	a.layerActs.h = a.h
	mixOut := make([]float32, n*d)
	tokenMixerForward(p, s, l, a.layerActs, rope, mixOut, true)
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
	if s.gated {
		a.up = make([]float32, n*2*s.inter)
		l.up.forward(p, a.up, src, n)
		a.act = make([]float32, n*s.inter)
		swigluForward(p, a.act, a.up, n, s.inter)
	} else {
		a.up = make([]float32, n*s.inter)
		l.up.forward(p, a.up, src, n)
		a.act = make([]float32, n*s.inter)
		geluForward(p, s.act, a.act, a.up)
	}
	l.down.forward(p, mlpOut, a.act, n)
	if s.parallel {
		for i := range out[:n*d] {
			out[i] = x[i] + mixOut[i] + mlpOut[i]
		}
	} else {
		for i := range out[:n*d] {
			out[i] = a.mid[i] + mlpOut[i]
		}
	}
	return a
}

// backward accumulates every parameter's gradient given dlogits.
func (f *fullModel) backward(fp *fullPass, dlogits []float32) error {
	s, z := f.s, f.s.sizes
	n, d, V := fp.n, z.d, z.vocab
	if len(dlogits) != n*V {
		return fmt.Errorf("distill: backward: dlogits has %d values, want %d×%d", len(dlogits), n, V)
	}
	if err := checkFinite(dlogits); err != nil {
		return fmt.Errorf("distill: backward: dlogits: %w", err)
	}
	p := s.pool
	// Head and final norm.
	linearBackwardWeight(p, f.headG, f.headBG, dlogits, fp.hn, n, V, d)
	dh := make([]float32, n*d)
	linearBackwardInput(p, dh, dlogits, n, s.head.w)
	normWeightGrad(p, f.finalG, dh, fp.hx, n, d, fp.hst)
	dx := make([]float32, n*d)
	s.final.backward(p, dx, dh, fp.hx, n, d, fp.hst)
	for i := len(s.layers) - 1; i >= 0; i-- {
		prev := make([]float32, n*d)
		fullLayerBackward(p, z, s.layers[i], &f.layers[i], fp.layers[i], fp.rope, prev, dx)
		dx = prev
	}
	// Embeddings: each text row's gradient goes to its token's row, in
	// sequence order; the image rows go back through the connector.
	row := 0
	for _, id := range fp.ids {
		if id == s.Config.ImageTokenIndex {
			row += s.vision.featureRows()
			continue
		}
		addTo(f.embedG[id*d:(id+1)*d], dx[row*d:(row+1)*d])
		row++
	}
	for _, im := range fp.images {
		s.conn.backward(p, dx[im.start*d:(im.start+im.conn.rows)*d], im.conn)
	}
	return nil
}

// fullLayerBackward backpropagates dout through layer l into dx,
// accumulating the layer's weight gradients into g.
func fullLayerBackward(p *pool, s textSizes, l *decoderLayer, g *fullGrads, a fullActs, rope *ropeTable, dx, dout []float32) {
	n, d := a.n, s.d
	mlp := func(dsrc, dmlp, src []float32) {
		dact := make([]float32, n*s.inter)
		linearBackwardWeight(p, g.down, g.downB, dmlp, a.act, n, d, s.inter)
		linearBackwardInput(p, dact, dmlp, n, l.down.w)
		rows := s.inter
		var dup []float32
		if s.gated {
			rows = 2 * s.inter
			dup = make([]float32, n*rows)
			swigluBackward(p, dup, dact, a.up, n, s.inter)
		} else {
			geluBackward(p, s.act, dact, dact, a.up)
			dup = dact
		}
		linearBackwardWeight(p, g.up, g.upB, dup, src, n, rows, d)
		linearBackwardInput(p, dsrc, dup, n, l.up.w)
	}
	mixer := func(dh, dmix []float32) {
		if l.mixer != nil {
			l.mixer.backward(p, dh, dmix, a.mix)
			return
		}
		sh := s.attnShape(n)
		datt := make([]float32, n*s.dq())
		linearBackwardWeight(p, g.o, g.oB, dmix, a.att, n, d, s.dq())
		linearBackwardInput(p, datt, dmix, n, l.o.w)
		dqkv := make([]float32, n*sh.stride)
		attentionBackward(p, sh, dqkv, datt, a.att, a.qkv, a.lse)
		ropeRotate(p, dqkv, n, sh.stride, sh.qOff, s.heads, s.headDim, rope, true)
		ropeRotate(p, dqkv, n, sh.stride, sh.kOff, s.kvHeads, s.headDim, rope, true)
		linearBackwardWeight(p, g.qkv, g.qkvB, dqkv, a.h, n, sh.stride, d)
		linearBackwardInput(p, dh, dqkv, n, l.qkv.w)
	}
	if s.parallel {
		dh := make([]float32, n*d)
		mixer(dh, dout)
		mlp(dh, dout, a.h)
		normWeightGrad(p, g.in, dh, a.x, n, d, a.n1)
		copy(dx, dout[:n*d])
		l.inNorm.backward(p, dx, dh, a.x, n, d, a.n1)
		return
	}
	dmid := make([]float32, n*d)
	copy(dmid, dout[:n*d])
	dh2 := make([]float32, n*d)
	mlp(dh2, dout, a.h2)
	normWeightGrad(p, g.post, dh2, a.mid, n, d, a.n2)
	l.postNorm.backward(p, dmid, dh2, a.mid, n, d, a.n2)
	dh := make([]float32, n*d)
	mixer(dh, dmid)
	normWeightGrad(p, g.in, dh, a.x, n, d, a.n1)
	copy(dx, dmid)
	l.inNorm.backward(p, dx, dh, a.x, n, d, a.n1)
}

// normWeightGrad adds a norm's weight (and bias) gradients given dy and
// the forward's input and statistics: dw_j += Σ_r dy_rj·x̂_rj, db_j += Σ_r
// dy_rj, x̂ = (x−μ)·rstd (LayerNorm) or x·rstd (RMSNorm). Each column sums
// its rows in order in float64, so the result does not depend on workers.
func normWeightGrad(p *pool, g normGrads, dy, x []float32, n, d int, st normStats) {
	p.rows(d, 16, func(lo, hi int) {
		for j := lo; j < hi; j++ {
			var sw, sb float64
			for r := range n {
				xh := float64(x[r*d+j])
				if st.mean != nil {
					xh -= st.mean[r]
				}
				xh *= st.rstd[r]
				gy := float64(dy[r*d+j])
				sw += gy * xh
				sb += gy
			}
			g.w[j] += float32(sw)
			if g.b != nil {
				g.b[j] += float32(sb)
			}
		}
	})
}

// fullSample runs one sample through the full model on the cross-entropy
// of labels and accumulates the gradients.
func (f *fullModel) sample(ids, labels []int, pixels []float32) (Losses, int, error) {
	fp, err := f.forward(ids, pixels)
	if err != nil {
		return Losses{}, 0, err
	}
	if len(labels) != fp.n {
		return Losses{}, 0, fmt.Errorf("labels cover %d rows, the sequence %d", len(labels), fp.n)
	}
	ce, dlogits, err := CrossEntropy(fp.logits, f.s.sizes.vocab, labels)
	if err != nil {
		return Losses{}, 0, err
	}
	if err := f.backward(fp, dlogits); err != nil {
		return Losses{}, 0, err
	}
	return Losses{Total: ce, CE: ce}, fp.n, nil
}

var errTrainAllLoss = errors.New("distill: training every parameter uses the cross-entropy only (alpha = beta = 0, gamma > 0)")

// paramNames lists the names of params, for tests and messages.
func paramNames(ps []*Param) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Name
	}
	return slices.Clip(out)
}
