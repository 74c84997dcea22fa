package distill

import (
	"fmt"

	"github.com/matsurgery/matsurgery/kernels"
)

// devArena is a group of device tensors allocated and freed together
// (kernels.Arena).
type devArena = kernels.Arena

// layerSaved is what one decoder layer's backward reads from its forward:
// the attention's q and k (after RoPE), v and output; the mixer's in_proj
// output, conv output and scan output; the MLP's input to its activation;
// and, in the sequential (Llama/Qwen2) block, the residual after the token
// mixer. The layer's input is the stream tensor itself. Everything else
// (norm outputs and statistics, slices of these, the gated norm's output,
// softmax and scan internals) the backward recomputes.
type layerSaved struct {
	q, k, v, att     kernels.Tensor // [1,n,dq], [1,n,dkv], [1,n,dkv], [1,n,dq]
	q4, k4, v4, att4 kernels.Tensor // their [1,n,heads,P] views
	proj, xBCc       kernels.Tensor // [1,n,DProj], [1,n,ConvDim]
	y4, yFlat        kernels.Tensor // [1,n,H,P] and its [1,n,DInner] view
	up               kernels.Tensor // [1,n,inter] or [1,n,2·inter] (gate | up)
	mid              kernels.Tensor // [1,n,d] (sequential blocks)
}

// branchBufs are the layer term's buffers of one Mamba layer: the
// teacher's input to and output of the layer, the student layer's output
// on that input and its gradient, and the run's saved activations.
type branchBufs struct {
	tIn, tOut, out, grad kernels.Tensor // [1,n,d]
	saved                *layerSaved
}

// imageBufs are one image's connector activations: the vision tower's
// features (the connector's input) and fc1's output (GELU's input).
type imageBufs struct {
	start     int            // the image's first sequence row
	feats, c1 kernels.Tensor // [1,F,vision hidden], [1,F,d]
}

// lowKey names a bf16 scratch buffer: a role and an element count.
type lowKey struct{ slot, n int }

// The roles of bf16 scratch buffers: a product's left operand, the right
// operand of a weight gradient, a normed input that feeds two products,
// attention's q, k and v, and the scan's x, B and C.
const (
	lowA = iota
	lowB
	lowH
	lowQ
	lowK
	lowV
	lowScanX
	lowScanB
	lowScanC
)

// devPlan holds every activation of one sequence length, one image count
// and one loss shape (with or without the layer term): allocated when a
// sample of a new shape comes and reused by every sample of that shape
// (the previous plan is freed first, so the peak is the longest
// sequence's). Backend has no sub-range views, so a plan cannot serve a
// shorter sequence than its own.
type devPlan struct {
	n, images int
	branch    bool
	ar        devArena

	x        []kernels.Tensor // L+1 stream tensors [1,n,d]: x[l] is layer l's input
	saved    []*layerSaved    // per layer (nil entries when recomputing)
	attnSet  *layerSaved      // recomputation: the one attention layer's set
	mixSet   *layerSaved      // recomputation: the one Mamba layer's set
	branches map[int]*branchBufs
	imgs     []*imageBufs

	// Forward scratch.
	h, mixOut, mixDrop, mlpOut, mlpDrop, reOut kernels.Tensor // [1,n,d]
	qkv                                        kernels.Tensor // [1,n,dq+2dkv]
	act, gate, lin                             kernels.Tensor // [1,n,inter]
	z, yn                                      kernels.Tensor // [1,n,DInner]
	xBC                                        kernels.Tensor // [1,n,ConvDim]
	dtRaw, dt                                  kernels.Tensor // [1,n,H]
	xs, bs, cs                                 kernels.Tensor // [1,n,DXB], [1,n,DXB], [1,n,G·N]
	x4, B4, C4                                 kernels.Tensor // [1,n,H,P], [1,n,G,N], [1,n,G,N] (views when nothing repeats)
	logits, dlogits                            kernels.Tensor // [1,n,vocab]
	embT                                       kernels.Tensor // the teacher's input [1,n,d]
	g, imgOut, dimg, dg, dc1                   kernels.Tensor // connector [1,F,d]

	// Backward scratch.
	d0, d1, dh, dhA, dhB, dtmp, dmix, dmlp, dmid kernels.Tensor // [1,n,d]
	dact, dup, sg, tt, dgate, dlin               kernels.Tensor // [1,n,inter] (dup [1,n,2·inter] gated)
	datt, datt4, dq4, dqf, dk4, dkf, dv4, dvf    kernels.Tensor // attention gradients and views
	dqkv                                         kernels.Tensor // [1,n,dq+2dkv]
	dyn, dz                                      kernels.Tensor // [1,n,DInner]
	dy4, dyFlat, dx4, dxFlat                     kernels.Tensor // [1,n,H,P] and [1,n,DInner] views
	ddt, dRaw                                    kernels.Tensor // [1,n,H]
	dB4, dBFlat, dC4, dCFlat                     kernels.Tensor // [1,n,G,N] and [1,n,G·N] views
	dxs, dbs                                     kernels.Tensor // [1,n,DXB] (views of dxFlat, dBFlat when nothing repeats)
	dxBCc, dxBC                                  kernels.Tensor // [1,n,ConvDim]
	dproj                                        kernels.Tensor // [1,n,DProj]

	low map[lowKey]kernels.Tensor // bf16 scratch, allocated on first use
}

// mixerConfig is the student's mixer configuration (every Mamba layer has
// the same, checked at plan time).
func (ds *DeviceStudent) mixerConfig() (kernels.Mamba2Config, bool) {
	for _, l := range ds.layers {
		if l.mix != nil {
			return l.mix.cfg, true
		}
	}
	return kernels.Mamba2Config{}, false
}

// planFor returns the plan of a sample of n rows with the given image
// count, with or without the layer term's buffers, allocating it (and
// freeing the previous plan) when the shape is new.
func (ds *DeviceStudent) planFor(n, images int, branch bool) (*devPlan, error) {
	if p := ds.plan; p != nil && p.n == n && p.images == images && p.branch == branch {
		return p, nil
	}
	if ds.plan != nil {
		ds.plan.free()
		ds.plan = nil
	}
	p, err := ds.newPlan(n, images, branch)
	if err != nil {
		return nil, fmt.Errorf("activations for %d tokens: %w", n, err)
	}
	ds.plan = p
	return p, nil
}

func (p *devPlan) free() {
	p.ar.Free()
	p.low = nil
}

// Bytes is the device memory the plan holds.
func (p *devPlan) Bytes() int64 { return p.ar.Bytes() }

func (ds *DeviceStudent) newSaved(a *devArena, n int, attention bool) *layerSaved {
	s := ds.sizes
	sv := &layerSaved{}
	if attention {
		sv.q, sv.k, sv.v, sv.att = a.Alloc(1, n, s.dq()), a.Alloc(1, n, s.dkv()), a.Alloc(1, n, s.dkv()), a.Alloc(1, n, s.dq())
		sv.q4, sv.att4 = a.View(sv.q, 1, n, s.heads, s.headDim), a.View(sv.att, 1, n, s.heads, s.headDim)
		sv.k4, sv.v4 = a.View(sv.k, 1, n, s.kvHeads, s.headDim), a.View(sv.v, 1, n, s.kvHeads, s.headDim)
	} else {
		c, _ := ds.mixerConfig()
		sv.proj, sv.xBCc = a.Alloc(1, n, c.DProj()), a.Alloc(1, n, c.ConvDim())
		sv.y4 = a.Alloc(1, n, c.NHeads, c.HeadDim)
		sv.yFlat = a.View(sv.y4, 1, n, c.DInner())
	}
	if s.gated {
		sv.up = a.Alloc(1, n, 2*s.inter)
		sv.mid = a.Alloc(1, n, s.d)
	} else {
		sv.up = a.Alloc(1, n, s.inter)
	}
	return sv
}

func (ds *DeviceStudent) newPlan(n, images int, branch bool) (*devPlan, error) {
	s := ds.sizes
	L := len(ds.layers)
	p := &devPlan{n: n, images: images, branch: branch, ar: *kernels.NewArena(ds.be), low: map[lowKey]kernels.Tensor{}}
	a := &p.ar
	hasAttn, hasMix := false, false
	for _, l := range ds.layers {
		if l.mix != nil {
			hasMix = true
		} else {
			hasAttn = true
		}
	}
	c, _ := ds.mixerConfig()
	for _, l := range ds.layers {
		if l.mix != nil && l.mix.cfg != c {
			return nil, fmt.Errorf("layer %d's mixer sizes %+v differ from the first mixer's %+v", l.index, l.mix.cfg, c)
		}
	}
	p.x = make([]kernels.Tensor, L+1)
	for i := range p.x {
		p.x[i] = a.Alloc(1, n, s.d)
	}
	p.saved = make([]*layerSaved, L)
	if ds.opts.Recompute {
		if hasAttn {
			p.attnSet = ds.newSaved(a, n, true)
		}
		if hasMix {
			p.mixSet = ds.newSaved(a, n, false)
		}
		p.reOut = a.Alloc(1, n, s.d)
	} else {
		for i, l := range ds.layers {
			p.saved[i] = ds.newSaved(a, n, l.mix == nil)
		}
	}
	if branch {
		p.branches = map[int]*branchBufs{}
		for _, l := range ds.layers {
			if l.mix == nil {
				continue
			}
			b := &branchBufs{tIn: a.Alloc(1, n, s.d), tOut: a.Alloc(1, n, s.d), out: a.Alloc(1, n, s.d), grad: a.Alloc(1, n, s.d)}
			if ds.opts.Recompute {
				b.saved = p.mixSet
			} else {
				b.saved = ds.newSaved(a, n, false)
			}
			p.branches[l.index] = b
		}
	}
	F, vd := ds.ImageTokens(), ds.Config.Vision.HiddenSize
	for range images {
		p.imgs = append(p.imgs, &imageBufs{feats: a.Alloc(1, F, vd), c1: a.Alloc(1, F, s.d)})
	}
	if images > 0 {
		p.g, p.imgOut, p.dimg, p.dg, p.dc1 = a.Alloc(1, F, s.d), a.Alloc(1, F, s.d), a.Alloc(1, F, s.d), a.Alloc(1, F, s.d), a.Alloc(1, F, s.d)
	}

	p.h, p.mixOut, p.mixDrop, p.mlpOut, p.mlpDrop = a.Alloc(1, n, s.d), a.Alloc(1, n, s.d), a.Alloc(1, n, s.d), a.Alloc(1, n, s.d), a.Alloc(1, n, s.d)
	p.act = a.Alloc(1, n, s.inter)
	if s.gated {
		p.gate, p.lin = a.Alloc(1, n, s.inter), a.Alloc(1, n, s.inter)
	}
	p.logits, p.dlogits = a.Alloc(1, n, s.vocab), a.Alloc(1, n, s.vocab)
	p.embT = a.Alloc(1, n, s.d)

	p.d0, p.d1, p.dh, p.dhA, p.dhB, p.dtmp = a.Alloc(1, n, s.d), a.Alloc(1, n, s.d), a.Alloc(1, n, s.d), a.Alloc(1, n, s.d), a.Alloc(1, n, s.d), a.Alloc(1, n, s.d)
	p.dmix, p.dmlp = a.Alloc(1, n, s.d), a.Alloc(1, n, s.d)
	p.dact = a.Alloc(1, n, s.inter)
	if s.gated {
		p.dmid = a.Alloc(1, n, s.d)
		p.dup = a.Alloc(1, n, 2*s.inter)
		p.sg, p.tt, p.dgate, p.dlin = a.Alloc(1, n, s.inter), a.Alloc(1, n, s.inter), a.Alloc(1, n, s.inter), a.Alloc(1, n, s.inter)
	} else {
		p.dup = a.Alloc(1, n, s.inter)
	}
	if hasAttn {
		dq, dkv := s.dq(), s.dkv()
		p.qkv, p.dqkv = a.Alloc(1, n, dq+2*dkv), a.Alloc(1, n, dq+2*dkv)
		p.datt = a.Alloc(1, n, dq)
		p.datt4 = a.View(p.datt, 1, n, s.heads, s.headDim)
		p.dq4 = a.Alloc(1, n, s.heads, s.headDim)
		p.dqf = a.View(p.dq4, 1, n, dq)
		p.dk4, p.dv4 = a.Alloc(1, n, s.kvHeads, s.headDim), a.Alloc(1, n, s.kvHeads, s.headDim)
		p.dkf, p.dvf = a.View(p.dk4, 1, n, dkv), a.View(p.dv4, 1, n, dkv)
	}
	if hasMix {
		H, P, G, N := c.NHeads, c.HeadDim, c.NGroups, c.DState
		p.z, p.yn = a.Alloc(1, n, c.DInner()), a.Alloc(1, n, c.DInner())
		p.xBC = a.Alloc(1, n, c.ConvDim())
		p.dtRaw, p.dt = a.Alloc(1, n, H), a.Alloc(1, n, H)
		p.xs, p.bs, p.cs = a.Alloc(1, n, c.DXB), a.Alloc(1, n, c.DXB), a.Alloc(1, n, G*N)
		if c.DXB/P == H {
			p.x4 = a.View(p.xs, 1, n, H, P)
		} else {
			p.x4 = a.Alloc(1, n, H, P)
		}
		if c.DXB/N == G {
			p.B4 = a.View(p.bs, 1, n, G, N)
		} else {
			p.B4 = a.Alloc(1, n, G, N)
		}
		p.C4 = a.View(p.cs, 1, n, G, N)

		p.dyn, p.dz = a.Alloc(1, n, c.DInner()), a.Alloc(1, n, c.DInner())
		p.dy4, p.dx4 = a.Alloc(1, n, H, P), a.Alloc(1, n, H, P)
		p.dyFlat, p.dxFlat = a.View(p.dy4, 1, n, c.DInner()), a.View(p.dx4, 1, n, c.DInner())
		p.ddt, p.dRaw = a.Alloc(1, n, H), a.Alloc(1, n, H)
		p.dB4, p.dC4 = a.Alloc(1, n, G, N), a.Alloc(1, n, G, N)
		p.dBFlat, p.dCFlat = a.View(p.dB4, 1, n, G*N), a.View(p.dC4, 1, n, G*N)
		if c.DXB/P == H {
			p.dxs = p.dxFlat
		} else {
			p.dxs = a.Alloc(1, n, c.DXB)
		}
		if c.DXB/N == G {
			p.dbs = p.dBFlat
		} else {
			p.dbs = a.Alloc(1, n, c.DXB)
		}
		p.dxBCc, p.dxBC = a.Alloc(1, n, c.ConvDim()), a.Alloc(1, n, c.ConvDim())
		p.dproj = a.Alloc(1, n, c.DProj())
	}
	if a.Err() != nil {
		a.Free()
		return nil, a.Err()
	}
	return p, nil
}

// savedFor returns layer l's saved set: its own, or in recomputation the
// shared one of its kind.
func (p *devPlan) savedFor(l *devLayer) *layerSaved {
	if s := p.saved[l.index]; s != nil {
		return s
	}
	if l.mix != nil {
		return p.mixSet
	}
	return p.attnSet
}

// lowp returns x as a matrix product's operand: x itself in f32
// precision or when it is already BF16, else x rounded to bf16 in the
// plan's scratch of the given role (overwritten by the next lowp of that
// role and size).
func (ds *DeviceStudent) lowp(p *devPlan, x kernels.Tensor, slot int) (kernels.Tensor, error) {
	if !ds.bf16 || x.DType() == kernels.BF16 {
		return x, nil
	}
	key := lowKey{slot, x.Len()}
	t, ok := p.low[key]
	if !ok {
		t = p.ar.AllocOf(kernels.BF16, x.Len())
		if p.ar.Err() != nil {
			err := p.ar.Err()
			p.ar.ClearErr()
			return nil, err
		}
		p.low[key] = t
	}
	v, err := ds.be.Reshape(t, x.Shape()...)
	if err != nil {
		return nil, err
	}
	if err := ds.be.Convert(v, x); err != nil {
		return nil, fmt.Errorf("round to bf16: %w", err)
	}
	return v, nil
}
