// Package verify proves a hybrid checkpoint's surgery instead of assuming it.
// Per converted layer it checks (SPEC §4):
//
//	(a) identity — in the linear-attention limit (A = 0, dt = 1, identity
//	    conv without SiLU, D = 0, no gate or norm) the Mamba-2 recurrence,
//	    sequential and chunked, on the converted x/B/C slices equals causal
//	    softmax-free attention computed from the teacher's v/k/q projections;
//	(b) scan consistency — the whole initialised mixer gives the same output
//	    with the chunked scan as with the sequential recurrence;
//	(c) distance — how far the real initialised mixer is from the softmax
//	    attention it replaced (reported, not judged);
//	(d) integrity — shapes, dtypes, finite values, mamba_config.json against
//	    the tensors, and with a teacher every untouched tensor bit-identical.
package verify

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"sync"
	"time"
	"unsafe"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/initmap"
	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/layout"
)

// Options of a verification.
type Options struct {
	Hybrid  string
	Teacher string // optional
	Backend kernels.Backend
	SeqLen  int
	Batch   int
	Seed    uint64
	Chunk   int
}

// Check is one pass/fail figure.
type Check struct {
	RelErr float64 `json:"rel_err"`
	Tol    float64 `json:"tol"`
	Pass   bool    `json:"pass"`
}

// LayerReport holds the checks of one converted layer.
type LayerReport struct {
	Layer          int      `json:"layer"`
	IdentitySource string   `json:"identity_source"` // "teacher" or "hybrid"
	IdentitySeq    Check    `json:"identity_sequential"`
	IdentityChunk  Check    `json:"identity_chunked"`
	Scan           Check    `json:"scan_consistency"`
	DistanceRelErr *float64 `json:"distance_rel_err"` // nil without a teacher
	DistanceCosine *float64 `json:"distance_cosine"`
	Integrity      bool     `json:"integrity"`
	Problems       []string `json:"problems,omitempty"`
	Pass           bool     `json:"pass"`
}

// Report is the whole verification.
type Report struct {
	Hybrid      string             `json:"hybrid"`
	Teacher     string             `json:"teacher,omitempty"`
	Device      string             `json:"device"`
	Family      string             `json:"family"`
	SeqLen      int                `json:"seq_len"`
	Batch       int                `json:"batch"`
	Chunk       int                `json:"chunk"`
	Seed        uint64             `json:"seed"`
	MambaLayers []int              `json:"mamba_layers"`
	Layers      []LayerReport      `json:"layers"`
	Problems    []string           `json:"problems"` // integrity problems not tied to a converted layer
	Tensors     int                `json:"tensors_checked"`
	Bytes       int64              `json:"bytes_checked"`
	Identical   int                `json:"tensors_identical_to_teacher"`
	Stages      map[string]float64 `json:"stage_seconds"`
	Pass        bool               `json:"pass"`
}

// Run verifies a hybrid checkpoint.
func Run(ctx context.Context, o Options) (*Report, error) {
	if o.Backend == nil {
		return nil, fmt.Errorf("no compute backend")
	}
	if o.SeqLen <= 0 {
		o.SeqLen = 256
	}
	if o.Batch <= 0 {
		o.Batch = 1
	}
	if o.Chunk <= 0 {
		o.Chunk = 64
	}
	r := &Report{Hybrid: o.Hybrid, Teacher: o.Teacher, Device: o.Backend.Name(), SeqLen: o.SeqLen, Batch: o.Batch,
		Chunk: o.Chunk, Seed: o.Seed, Stages: map[string]float64{}, Problems: []string{}}
	stage := func(name string, start time.Time) { r.Stages[name] += time.Since(start).Seconds() }

	t0 := time.Now()
	cfg, err := formats.ReadModelConfig(o.Hybrid)
	if err != nil {
		return nil, err
	}
	r.Family = string(cfg.Family)
	mc, ok, err := formats.ReadMambaConfig(o.Hybrid)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%s: no %s: not a hybrid checkpoint (convert it first)", o.Hybrid, formats.MambaConfigName)
	}
	hy, err := formats.Open(o.Hybrid)
	if err != nil {
		return nil, err
	}
	defer hy.Close()
	var te *formats.Checkpoint
	if o.Teacher != "" {
		if te, err = formats.Open(o.Teacher); err != nil {
			return nil, err
		}
		defer te.Close()
		tcfg, err := formats.ReadModelConfig(o.Teacher)
		if err != nil {
			return nil, err
		}
		if tcfg.Family != cfg.Family || tcfg.Text.NumLayers != cfg.Text.NumLayers || tcfg.Text.HiddenSize != cfg.Text.HiddenSize {
			return nil, fmt.Errorf("teacher %s (%s, %d layers, hidden %d) does not match the hybrid (%s, %d layers, hidden %d)",
				o.Teacher, tcfg.Family, tcfg.Text.NumLayers, tcfg.Text.HiddenSize, cfg.Family, cfg.Text.NumLayers, cfg.Text.HiddenSize)
		}
	}
	desc, err := layout.For(cfg.Family)
	if err != nil {
		return nil, err
	}
	r.MambaLayers = mc.MambaLayers()
	stage("open", t0)

	// Integrity: the structure from the headers first (it decides which layers
	// can be checked numerically), then the values — every tensor read —
	// on the host while the numeric checks run on the backend.
	t0 = time.Now()
	in := newIntegrity(hy, te, cfg, mc, desc)
	in.checkConfig()
	in.checkStructure()
	structural := map[int]bool{}
	for l, p := range in.perLayer {
		structural[l] = len(p) > 0
	}
	valuesDone := make(chan error, 1)
	var valuesSeconds float64
	go func() {
		tv := time.Now()
		err := in.checkValues(ctx)
		valuesSeconds = time.Since(tv).Seconds()
		valuesDone <- err
	}()
	stage("integrity (headers)", t0)

	mcfg := kernels.Mamba2Config{DModel: cfg.Text.HiddenSize, NHeads: mc.NGroups, HeadDim: mc.DState, DState: mc.DState,
		NGroups: mc.NGroups, DXB: mc.DXB, ConvKernel: 4, NormEps: 1e-5, Chunk: o.Chunk}
	lv := &layerVerifier{o: o, be: o.Backend, hy: hy, te: te, cfg: cfg, mc: mc, desc: desc, mcfg: mcfg}
	numeric := map[int][]string{}
	ran := map[int]bool{}
	var loopErr error
	for _, l := range r.MambaLayers {
		if loopErr = ctx.Err(); loopErr != nil {
			break
		}
		lr := LayerReport{Layer: l}
		switch {
		case in.configBad:
			numeric[l] = append(numeric[l], "numeric checks skipped: "+formats.MambaConfigName+" disagrees with config.json")
		case structural[l]:
		default:
			ran[l] = true
			if err := lv.check(&lr, r.Stages); err != nil {
				numeric[l] = append(numeric[l], err.Error())
			}
		}
		r.Layers = append(r.Layers, lr)
	}
	verr := <-valuesDone
	r.Stages["integrity (values, overlapped)"] = valuesSeconds
	if loopErr != nil {
		return nil, loopErr
	}
	if verr != nil {
		return nil, verr
	}
	r.Tensors, r.Bytes, r.Identical = in.tensors, in.bytes, in.identical
	r.Problems = append(r.Problems, in.global...)
	for i := range r.Layers {
		lr := &r.Layers[i]
		lr.Problems = append(append([]string(nil), in.perLayer[lr.Layer]...), numeric[lr.Layer]...)
		lr.Integrity = len(lr.Problems) == 0 && ran[lr.Layer]
		lr.Pass = lr.Integrity && lr.IdentitySeq.Pass && lr.IdentityChunk.Pass && lr.Scan.Pass
	}
	r.Pass = len(r.Problems) == 0 && len(r.Layers) > 0
	for _, lr := range r.Layers {
		r.Pass = r.Pass && lr.Pass
	}
	if len(r.Layers) == 0 {
		r.Problems = append(r.Problems, "no Mamba layers listed in "+formats.MambaConfigName)
	}
	return r, nil
}

// identityTol is the pass threshold of the identity check: rounding level
// of float32 arithmetic when the slices carry the teacher's exact values,
// else the rounding level of the dtype they were stored in.
func identityTol(hybridDT, teacherDT formats.DType) float64 {
	if hybridDT == teacherDT || teacherDT == "" {
		return 1e-4
	}
	switch hybridDT {
	case formats.BF16:
		return 3e-2
	case formats.F16:
		return 4e-3
	}
	return 1e-4
}

const scanTol = 1e-4

type layerVerifier struct {
	o    Options
	be   kernels.Backend
	hy   *formats.Checkpoint
	te   *formats.Checkpoint
	cfg  *formats.ModelConfig
	mc   *formats.MambaConfig
	desc *layout.Descriptor
	mcfg kernels.Mamba2Config
}

// pool frees every tensor it allocated.
type pool struct {
	be kernels.Backend
	ts []kernels.Tensor
}

func (p *pool) keep(t kernels.Tensor, err error) (kernels.Tensor, error) {
	if err == nil && t != nil {
		p.ts = append(p.ts, t)
	}
	return t, err
}

func (p *pool) alloc(shape ...int) (kernels.Tensor, error) {
	return p.keep(p.be.Alloc(kernels.F32, shape...))
}
func (p *pool) upload(v []float32, shape ...int) (kernels.Tensor, error) {
	return p.keep(p.be.Upload(v, kernels.F32, shape...))
}
func (p *pool) free() {
	for _, t := range p.ts {
		p.be.Free(t)
	}
	p.ts = nil
}

// upload reads rows [r0, r0+n) of a 2-D tensor (n < 0: the whole tensor,
// any rank) straight from its file and uploads them: a BF16 matrix as its
// raw bits (MatMul takes BF16 operands; nothing is decoded on the host),
// everything else as float32.
func (lv *layerVerifier) upload(p *pool, c *formats.Checkpoint, name string, r0, n int) (kernels.Tensor, error) {
	info, ok := c.Tensor(name)
	if !ok {
		return nil, fmt.Errorf("missing tensor %s", name)
	}
	es := int64(info.DType.Size())
	if es == 0 || !info.DType.IsFloat() {
		return nil, fmt.Errorf("tensor %s: dtype %s is not a float type", name, info.DType)
	}
	shape := make([]int, len(info.Shape))
	for i, d := range info.Shape {
		shape[i] = int(d)
	}
	off, size := int64(0), info.Size
	if n >= 0 {
		if len(shape) != 2 {
			return nil, fmt.Errorf("tensor %s: shape %v is not 2-D", name, info.Shape)
		}
		if r0+n > shape[0] {
			return nil, fmt.Errorf("tensor %s: rows [%d, %d) outside %v", name, r0, r0+n, info.Shape)
		}
		rowBytes := int64(shape[1]) * es
		off, size, shape = int64(r0)*rowBytes, int64(n)*rowBytes, []int{n, shape[1]}
	}
	sec, err := c.Section(name)
	if err != nil {
		return nil, err
	}
	raw := make([]byte, size)
	if _, err := sec.ReadAt(raw, off); err != nil {
		return nil, fmt.Errorf("%s: tensor %s: %w", info.File, name, err)
	}
	if info.DType == formats.BF16 && len(shape) == 2 {
		return p.keep(lv.be.UploadBF16(bf16Bits(raw), shape...))
	}
	v := make([]float32, size/es)
	if err := formats.DecodeFloat32(info.DType, raw, v); err != nil {
		return nil, fmt.Errorf("tensor %s: %w", name, err)
	}
	return p.upload(v, shape...)
}

func (lv *layerVerifier) check(lr *LayerReport, stages map[string]float64) error {
	l := lr.Layer
	be := lv.be
	p := &pool{be: be}
	defer p.free()
	B, L, d := lv.o.Batch, lv.o.SeqLen, lv.cfg.Text.HiddenSize
	H, P, Hkv := lv.mcfg.NHeads, lv.mcfg.HeadDim, lv.mc.DXB/lv.mcfg.HeadDim
	di, dxb := H*P, lv.mc.DXB
	mp := layout.MambaPrefix(l)

	// Fresh hidden states, N(0,1), seeded per layer.
	rng := rand.New(rand.NewPCG(lv.o.Seed, uint64(l)+1))
	hv := make([]float32, B*L*d)
	for i := range hv {
		hv[i] = float32(rng.NormFloat64())
	}
	h, err := p.upload(hv, B, L, d)
	if err != nil {
		return err
	}

	// (a) identity in the linear-attention limit.
	t0 := time.Now()
	proj := func(w kernels.Tensor, rows int) (kernels.Tensor, error) {
		out, err := p.alloc(B, L, rows)
		if err != nil {
			return nil, err
		}
		return out, be.MatMul(out, h, w, true)
	}
	heads := func(x kernels.Tensor, src int) (kernels.Tensor, error) {
		out, err := p.alloc(B, L, H, P)
		if err != nil {
			return nil, err
		}
		if src == H {
			xv, err := be.Reshape(x, B, L, H, P)
			if err != nil {
				return nil, err
			}
			return out, be.Scale(out, xv, 1)
		}
		return out, be.RepeatHeads(out, x, src, H, P)
	}
	inName := mp + initmap.InProj
	wx, err := lv.upload(p, lv.hy, inName, di, dxb)
	if err != nil {
		return err
	}
	wb, err := lv.upload(p, lv.hy, inName, di+dxb, dxb)
	if err != nil {
		return err
	}
	wc, err := lv.upload(p, lv.hy, inName, di+2*dxb, di)
	if err != nil {
		return err
	}
	var xs, bs, cs kernels.Tensor
	if xs, err = proj(wx, dxb); err == nil {
		if bs, err = proj(wb, dxb); err == nil {
			cs, err = proj(wc, di)
		}
	}
	if err != nil {
		return err
	}
	xh, err := heads(xs, Hkv)
	if err != nil {
		return err
	}
	bh, err := heads(bs, Hkv)
	if err != nil {
		return err
	}
	ch, err := heads(cs, H)
	if err != nil {
		return err
	}
	ones := make([]float32, B*L*H)
	for i := range ones {
		ones[i] = 1
	}
	dt1, err := p.upload(ones, B, L, H)
	if err != nil {
		return err
	}
	a0, err := p.upload(make([]float32, H), H)
	if err != nil {
		return err
	}
	ySeq, err := p.alloc(B, L, H, P)
	if err != nil {
		return err
	}
	yChunk, err := p.alloc(B, L, H, P)
	if err != nil {
		return err
	}
	if err := be.SSDRecurrence(ySeq, xh, dt1, a0, bh, ch, nil, nil); err != nil {
		return fmt.Errorf("layer %d: SSDRecurrence: %w", l, err)
	}
	if err := be.SSDChunkScan(yChunk, xh, dt1, a0, bh, ch, nil, nil, lv.o.Chunk); err != nil {
		return fmt.Errorf("layer %d: SSDChunkScan: %w", l, err)
	}
	// The attention side: q/k/v from the teacher when given, else the hybrid's own slices.
	q, k, v := ch, bs, xs
	lr.IdentitySource = "hybrid"
	teacherDT := formats.DType("")
	if lv.te != nil {
		lr.IdentitySource = "teacher"
		load := func(part layout.Part, rows int) (kernels.Tensor, error) {
			name := lv.desc.LayerTensor(l, part, "weight")
			info, ok := lv.te.Tensor(name)
			if !ok {
				return nil, fmt.Errorf("teacher has no %s", name)
			}
			teacherDT = info.DType
			w, err := lv.upload(p, lv.te, name, 0, rows)
			if err != nil {
				return nil, err
			}
			return proj(w, rows)
		}
		var qs kernels.Tensor
		if qs, err = load(layout.AttnQ, di); err == nil {
			if k, err = load(layout.AttnK, dxb); err == nil {
				v, err = load(layout.AttnV, dxb)
			}
		}
		if err != nil {
			return err
		}
		if q, err = be.Reshape(qs, B, L, H, P); err != nil {
			return err
		}
	}
	// The attention side is computed on the host in float64 (the running-state
	// form H_t = H_{t−1} + v_t k_tᵀ, o_t = H_t q_t), independent of the
	// backend's scan and attention kernels.
	qh, err := be.Download(q)
	if err != nil {
		return err
	}
	kh, err := be.Download(k)
	if err != nil {
		return err
	}
	vh, err := be.Download(v)
	if err != nil {
		return err
	}
	ref := linearAttention64(qh, kh, vh, B, L, H, Hkv, P)
	hinfo, _ := lv.hy.Tensor(inName)
	tol := identityTol(hinfo.DType, teacherDT)
	for _, c := range []struct {
		y   kernels.Tensor
		dst *Check
	}{{ySeq, &lr.IdentitySeq}, {yChunk, &lr.IdentityChunk}} {
		got, err := be.Download(c.y)
		if err != nil {
			return err
		}
		e := relErr64(got, ref)
		*c.dst = Check{RelErr: e, Tol: tol, Pass: e <= tol}
	}
	stages["identity"] += time.Since(t0).Seconds()

	// (b) the whole initialised mixer, chunked against sequential.
	t0 = time.Now()
	var w kernels.Mamba2Weights
	for _, x := range []struct {
		dst  *kernels.Tensor
		name string
		opt  bool
	}{{&w.InProj, initmap.InProj, false}, {&w.InProjBias, initmap.InProjBias, true}, {&w.Conv1dWeight, initmap.Conv1dW, false},
		{&w.Conv1dBias, initmap.Conv1dB, false}, {&w.DtBias, initmap.DtBias, false}, {&w.ALog, initmap.ALog, false},
		{&w.D, initmap.DSkip, false}, {&w.NormWeight, initmap.NormW, false}, {&w.OutProj, initmap.OutProj, false},
		{&w.OutProjBias, initmap.OutProjB, true}} {
		if _, ok := lv.hy.Tensor(mp + x.name); !ok && x.opt {
			continue
		}
		t, err := lv.upload(p, lv.hy, mp+x.name, 0, -1)
		if err != nil {
			return err
		}
		*x.dst = t
	}
	mixSeq, err := p.keep(kernels.Mamba2Forward(be, lv.mcfg, w, h, false))
	if err != nil {
		return fmt.Errorf("layer %d: mixer (sequential): %w", l, err)
	}
	mixChunk, err := p.keep(kernels.Mamba2Forward(be, lv.mcfg, w, h, true))
	if err != nil {
		return fmt.Errorf("layer %d: mixer (chunked): %w", l, err)
	}
	ms, err := be.Download(mixSeq)
	if err != nil {
		return err
	}
	mch, err := be.Download(mixChunk)
	if err != nil {
		return err
	}
	e := relErr(mch, ms)
	lr.Scan = Check{RelErr: e, Tol: scanTol, Pass: e <= scanTol && allFinite(ms)}
	stages["scan"] += time.Since(t0).Seconds()

	// (c) distance to the softmax attention it replaced.
	if lv.te != nil {
		t0 = time.Now()
		sa, err := lv.softmaxAttention(p, l, h)
		if err != nil {
			return err
		}
		re, cos := relErr(ms, sa), cosine(ms, sa)
		lr.DistanceRelErr, lr.DistanceCosine = &re, &cos
		stages["distance"] += time.Since(t0).Seconds()
	}
	return nil
}

// softmaxAttention computes the teacher's attention block output for hidden h:
// o_proj(softmax(RoPE(q)·RoPE(k)ᵀ/√P)·v) with the teacher's biases.
func (lv *layerVerifier) softmaxAttention(p *pool, l int, h kernels.Tensor) ([]float32, error) {
	be := lv.be
	tx := lv.cfg.Text
	B, L, d := lv.o.Batch, lv.o.SeqLen, tx.HiddenSize
	H, Hkv, P := tx.NumHeads, tx.NumKVHeads, tx.HeadDim
	lin := func(part layout.Part, rows int) (kernels.Tensor, error) {
		w, err := lv.upload(p, lv.te, lv.desc.LayerTensor(l, part, "weight"), 0, -1)
		if err != nil {
			return nil, err
		}
		in := h
		if part == layout.AttnO {
			return nil, fmt.Errorf("internal: o projection through lin")
		}
		out, err := p.alloc(B, L, rows)
		if err != nil {
			return nil, err
		}
		if err := be.MatMul(out, in, w, true); err != nil {
			return nil, err
		}
		if err := lv.addBias(p, out, l, part); err != nil {
			return nil, err
		}
		return out, nil
	}
	q, err := lin(layout.AttnQ, H*P)
	if err != nil {
		return nil, err
	}
	k, err := lin(layout.AttnK, Hkv*P)
	if err != nil {
		return nil, err
	}
	v, err := lin(layout.AttnV, Hkv*P)
	if err != nil {
		return nil, err
	}
	q4, err := be.Reshape(q, B, L, H, P)
	if err != nil {
		return nil, err
	}
	k4, err := be.Reshape(k, B, L, Hkv, P)
	if err != nil {
		return nil, err
	}
	v4, err := be.Reshape(v, B, L, Hkv, P)
	if err != nil {
		return nil, err
	}
	if rd := tx.RotaryDim(); rd > 0 {
		if err := be.RoPE(q4, rd, tx.RopeTheta, 0); err != nil {
			return nil, err
		}
		if err := be.RoPE(k4, rd, tx.RopeTheta, 0); err != nil {
			return nil, err
		}
	}
	att, err := p.alloc(B, L, H, P)
	if err != nil {
		return nil, err
	}
	if err := be.SoftmaxAttention(att, q4, k4, v4, float32(1/math.Sqrt(float64(P))), true); err != nil {
		return nil, err
	}
	wo, err := lv.upload(p, lv.te, lv.desc.LayerTensor(l, layout.AttnO, "weight"), 0, -1)
	if err != nil {
		return nil, err
	}
	out, err := p.alloc(B, L, d)
	if err != nil {
		return nil, err
	}
	att2, err := be.Reshape(att, B, L, H*P)
	if err != nil {
		return nil, err
	}
	if err := be.MatMul(out, att2, wo, true); err != nil {
		return nil, err
	}
	if err := lv.addBias(p, out, l, layout.AttnO); err != nil {
		return nil, err
	}
	return be.Download(out)
}

func (lv *layerVerifier) addBias(p *pool, x kernels.Tensor, l int, part layout.Part) error {
	name := lv.desc.LayerTensor(l, part, "bias")
	if _, ok := lv.te.Tensor(name); !ok {
		return nil
	}
	b, err := lv.upload(p, lv.te, name, 0, -1)
	if err != nil {
		return err
	}
	return lv.be.AddBias(x, b)
}

func relErr(got, want []float32) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	var num, den float64
	for i := range got {
		d := float64(got[i]) - float64(want[i])
		num += d * d
		den += float64(want[i]) * float64(want[i])
	}
	if math.IsNaN(num) {
		return math.NaN()
	}
	if den == 0 {
		if num == 0 {
			return 0
		}
		return math.Inf(1)
	}
	return math.Sqrt(num / den)
}

func cosine(a, b []float32) float64 {
	var ab, aa, bb float64
	for i := range a {
		ab += float64(a[i]) * float64(b[i])
		aa += float64(a[i]) * float64(a[i])
		bb += float64(b[i]) * float64(b[i])
	}
	if aa == 0 || bb == 0 {
		return 0
	}
	return ab / math.Sqrt(aa*bb)
}

func allFinite(v []float32) bool {
	for _, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return false
		}
	}
	return true
}

// linearAttention64 is causal softmax-free attention in float64:
// out_t = Σ_{s≤t} (q_t·k_s) v_s, per batch and head, head h reading KV head
// h/(H/Hkv). q is [B,L,H,P], k and v [B,L,Hkv,P].
func linearAttention64(q, k, v []float32, B, L, H, Hkv, P int) []float64 {
	out := make([]float64, B*L*H*P)
	rep := H / Hkv
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for b := 0; b < B; b++ {
		for h := 0; h < H; h++ {
			wg.Add(1)
			sem <- struct{}{}
			go func(b, h int) {
				defer func() { <-sem; wg.Done() }()
				S := make([]float64, P*P) // S[i][j] = Σ v_i k_j
				kh := h / rep
				for t := 0; t < L; t++ {
					qo := ((b*L+t)*H + h) * P
					ko := ((b*L+t)*Hkv + kh) * P
					for i := 0; i < P; i++ {
						vi := float64(v[ko+i])
						row := S[i*P : (i+1)*P]
						for j := 0; j < P; j++ {
							row[j] += vi * float64(k[ko+j])
						}
					}
					for i := 0; i < P; i++ {
						row := S[i*P : (i+1)*P]
						var acc float64
						for j := 0; j < P; j++ {
							acc += row[j] * float64(q[qo+j])
						}
						out[qo+i] = acc
					}
				}
			}(b, h)
		}
	}
	wg.Wait()
	return out
}

func relErr64(got []float32, want []float64) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	var num, den float64
	for i := range got {
		d := float64(got[i]) - want[i]
		num += d * d
		den += want[i] * want[i]
	}
	if math.IsNaN(num) {
		return math.NaN()
	}
	if den == 0 {
		if num == 0 {
			return 0
		}
		return math.Inf(1)
	}
	return math.Sqrt(num / den)
}

var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// bf16Bits views little-endian raw bf16 bytes as uint16s (no copy on a
// little-endian machine; the allocator aligns the buffer).
func bf16Bits(raw []byte) []uint16 {
	if littleEndian && len(raw) >= 2 {
		return unsafe.Slice((*uint16)(unsafe.Pointer(unsafe.SliceData(raw))), len(raw)/2)
	}
	bits := make([]uint16, len(raw)/2)
	for i := range bits {
		bits[i] = binary.LittleEndian.Uint16(raw[2*i:])
	}
	return bits
}
