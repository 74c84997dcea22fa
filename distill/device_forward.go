package distill

import (
	"fmt"
	"math"

	"github.com/matsurgery/matsurgery/kernels"
)

// The device student's forward blocks: the host's layerForward,
// mixer.forward, headForward and connector.forward on backend tensors,
// writing what backward reads into a layerSaved.

// devDrop is what one run of a layer draws its residual dropout masks
// from (the host's layerDropout); nil runs without dropout.
type devDrop struct {
	key    DropoutKey
	prob   float64
	branch bool // the layer term's run on the teacher's input
}

// seeds are the streams of layer's token mixer and MLP masks.
func (dd *devDrop) seeds(layer int) (mix, mlp uint64) {
	if dd.branch {
		return dd.key.streamSeed(layer, dropBranchMixer), dd.key.streamSeed(layer, dropBranchMLP)
	}
	return dd.key.streamSeed(layer, dropMixer), dd.key.streamSeed(layer, dropMLP)
}

func kernelGELU(k geluKind) kernels.GELUForm {
	if k == geluTanh {
		return kernels.GELUTanh
	}
	return kernels.GELUErf
}

// apply writes y = norm(x).
func (nm devNorm) apply(be kernels.Backend, y, x kernels.Tensor) error {
	if nm.rms {
		return be.RMSNorm(y, x, nm.w, nm.eps)
	}
	return be.LayerNorm(y, x, nm.w, nm.b, nm.eps)
}

// backward writes dx, the gradient of norm's input x given dy.
func (nm devNorm) backward(tr kernels.Trainer, dx, dy, x kernels.Tensor) error {
	if nm.rms {
		return tr.RMSNormBackward(dx, dy, x, nm.w, nm.eps)
	}
	return tr.LayerNormBackward(dx, dy, x, nm.w, nm.eps)
}

// linear writes y = x·Wᵀ + b in the student's precision (x may already be
// a bf16 operand from lowp).
func (ds *DeviceStudent) linear(p *devPlan, y, x kernels.Tensor, l *devLinear) error {
	w := l.w
	if ds.bf16 {
		var err error
		if x, err = ds.lowp(p, x, lowA); err != nil {
			return err
		}
		w = l.w16
	}
	if err := ds.be.MatMul(y, x, w, true); err != nil {
		return err
	}
	if l.b != nil {
		return ds.be.AddBias(y, l.b)
	}
	return nil
}

// layerForward runs decoder layer l on x into out ([1,n,d], distinct),
// the host's layerForward:
//
//	Phi:          h = LN(x); out = x + drop(mix(h)) + drop(mlp(h))
//	Llama/Qwen2:  mid = x + drop(mix(RMS₁ x)); out = mid + drop(mlp(RMS₂ mid))
func (ds *DeviceStudent) layerForward(p *devPlan, l *devLayer, x, out kernels.Tensor, sv *layerSaved, drop *devDrop) error {
	be, tr, s := ds.be, ds.tr, ds.sizes
	if err := l.inNorm.apply(be, p.h, x); err != nil {
		return fmt.Errorf("input norm: %w", err)
	}
	h, err := ds.lowp(p, p.h, lowH)
	if err != nil {
		return fmt.Errorf("input norm: %w", err)
	}
	if l.mix != nil {
		err = ds.mixerForward(p, l.mix, sv, h, p.mixOut)
	} else {
		err = ds.attentionForward(p, l, sv, h, p.mixOut)
	}
	if err != nil {
		return err
	}
	var seedMix, seedMLP uint64
	if drop != nil {
		seedMix, seedMLP = drop.seeds(l.index)
	}
	mix := p.mixOut
	if drop != nil {
		if err := tr.Dropout(p.mixDrop, p.mixOut, seedMix, drop.prob); err != nil {
			return fmt.Errorf("token mixer dropout: %w", err)
		}
		mix = p.mixDrop
	}
	src := h
	if s.gated {
		if err := be.Add(sv.mid, x, mix); err != nil {
			return fmt.Errorf("residual: %w", err)
		}
		if err := l.postNorm.apply(be, p.h, sv.mid); err != nil {
			return fmt.Errorf("post-attention norm: %w", err)
		}
		if src, err = ds.lowp(p, p.h, lowH); err != nil {
			return fmt.Errorf("post-attention norm: %w", err)
		}
	}
	if err := ds.mlpForward(p, l, sv, src); err != nil {
		return err
	}
	mlp := p.mlpOut
	if drop != nil {
		if err := tr.Dropout(p.mlpDrop, p.mlpOut, seedMLP, drop.prob); err != nil {
			return fmt.Errorf("mlp dropout: %w", err)
		}
		mlp = p.mlpDrop
	}
	if s.gated {
		if err := be.Add(out, sv.mid, mlp); err != nil {
			return fmt.Errorf("mlp residual: %w", err)
		}
		return nil
	}
	if err := be.Add(out, x, mix); err != nil {
		return fmt.Errorf("residual: %w", err)
	}
	if err := be.Add(out, out, mlp); err != nil {
		return fmt.Errorf("mlp residual: %w", err)
	}
	return nil
}

// attentionForward: q, k, v (one fused product), RoPE on q and k, causal
// softmax attention with scale 1/√head_dim, the output projection.
func (ds *DeviceStudent) attentionForward(p *devPlan, l *devLayer, sv *layerSaved, h, out kernels.Tensor) error {
	be, s := ds.be, ds.sizes
	dq, dkv := s.dq(), s.dkv()
	if err := ds.linear(p, p.qkv, h, &l.qkv); err != nil {
		return fmt.Errorf("q/k/v projections: %w", err)
	}
	for _, part := range []struct {
		t    kernels.Tensor
		col0 int
	}{{sv.q, 0}, {sv.k, dq}, {sv.v, dq + dkv}} {
		if err := be.SliceCols(part.t, p.qkv, part.col0); err != nil {
			return fmt.Errorf("split q/k/v: %w", err)
		}
	}
	if err := be.RoPE(sv.q4, s.rotary, s.theta, 0); err != nil {
		return fmt.Errorf("rope q: %w", err)
	}
	if err := be.RoPE(sv.k4, s.rotary, s.theta, 0); err != nil {
		return fmt.Errorf("rope k: %w", err)
	}
	q, k, v, err := ds.attnInputs(p, sv)
	if err != nil {
		return err
	}
	if err := be.SoftmaxAttention(sv.att4, q, k, v, attnScale(s), true); err != nil {
		return fmt.Errorf("attention: %w", err)
	}
	if err := ds.linear(p, out, sv.att, &l.o); err != nil {
		return fmt.Errorf("attention output projection: %w", err)
	}
	return nil
}

func attnScale(s textSizes) float32 { return float32(1 / math.Sqrt(float64(s.headDim))) }

// attnInputs returns the attention's q, k and v from the saved ones: as
// they are, or rounded to bf16 when the student's precision is bf16 and
// the backend's attention takes BF16 (its QKᵀ and PV products then run
// on bf16 operands, as under the reference's autocast).
func (ds *DeviceStudent) attnInputs(p *devPlan, sv *layerSaved) (q, k, v kernels.Tensor, err error) {
	if !ds.attn16 {
		return sv.q4, sv.k4, sv.v4, nil
	}
	if q, err = ds.lowp(p, sv.q4, lowQ); err != nil {
		return nil, nil, nil, err
	}
	if k, err = ds.lowp(p, sv.k4, lowK); err != nil {
		return nil, nil, nil, err
	}
	if v, err = ds.lowp(p, sv.v4, lowV); err != nil {
		return nil, nil, nil, err
	}
	return q, k, v, nil
}

// mixerForward runs the Mamba-2 mixer on h into out: in_proj, conv + SiLU
// over x|B|C, x and B repeated, dt = softplus(dt_raw + dt_bias), the
// chunked scan, the gated RMSNorm, out_proj.
func (ds *DeviceStudent) mixerForward(p *devPlan, mx *devMixer, sv *layerSaved, h, out kernels.Tensor) error {
	be, c := ds.be, mx.cfg
	if err := ds.linear(p, sv.proj, h, &mx.inProj); err != nil {
		return fmt.Errorf("mamba in_proj: %w", err)
	}
	if err := be.SliceCols(p.xBC, sv.proj, c.DInner()); err != nil {
		return fmt.Errorf("mamba split xBC: %w", err)
	}
	if err := be.CausalConv1d(sv.xBCc, p.xBC, mx.convW2, mx.convB.data(), true); err != nil {
		return fmt.Errorf("mamba conv1d: %w", err)
	}
	if err := ds.mixerInputs(p, mx, sv); err != nil {
		return err
	}
	x, B, C, err := ds.scanInputs(p)
	if err != nil {
		return err
	}
	if err := be.SSDChunkScan(sv.y4, x, p.dt, mx.a, B, C, mx.d.data(), nil, ds.opts.Chunk); err != nil {
		return fmt.Errorf("mamba scan: %w", err)
	}
	if err := ds.gatedNorm(p, mx, sv); err != nil {
		return err
	}
	if err := ds.linear(p, out, p.yn, &mx.outProj); err != nil {
		return fmt.Errorf("mamba out_proj: %w", err)
	}
	return nil
}

// scanInputs returns the scan's x, B and C (mixerInputs' p.x4, p.B4,
// p.C4): as they are, or rounded to bf16 when the student's precision is
// bf16 and the backend's scan takes BF16 (as under the reference's
// autocast, where the scan's inputs come out of bf16 products). Forward
// and backward read the same rounded values.
func (ds *DeviceStudent) scanInputs(p *devPlan) (x, B, C kernels.Tensor, err error) {
	if !ds.scan16 {
		return p.x4, p.B4, p.C4, nil
	}
	if x, err = ds.lowp(p, p.x4, lowScanX); err != nil {
		return nil, nil, nil, err
	}
	if B, err = ds.lowp(p, p.B4, lowScanB); err != nil {
		return nil, nil, nil, err
	}
	if C, err = ds.lowp(p, p.C4, lowScanC); err != nil {
		return nil, nil, nil, err
	}
	return x, B, C, nil
}

// mixerInputs writes the scan's inputs from the saved in_proj and conv
// outputs: x and B (repeated to the heads and groups), C, dt_raw and dt.
func (ds *DeviceStudent) mixerInputs(p *devPlan, mx *devMixer, sv *layerSaved) error {
	be, c := ds.be, mx.cfg
	for _, part := range []struct {
		t    kernels.Tensor
		col0 int
	}{{p.xs, 0}, {p.bs, c.DXB}, {p.cs, 2 * c.DXB}} {
		if err := be.SliceCols(part.t, sv.xBCc, part.col0); err != nil {
			return fmt.Errorf("mamba split x/B/C: %w", err)
		}
	}
	if c.DXB/c.HeadDim != c.NHeads {
		if err := be.RepeatHeads(p.x4, p.xs, c.DXB/c.HeadDim, c.NHeads, c.HeadDim); err != nil {
			return fmt.Errorf("mamba repeat x: %w", err)
		}
	}
	if c.DXB/c.DState != c.NGroups {
		if err := be.RepeatHeads(p.B4, p.bs, c.DXB/c.DState, c.NGroups, c.DState); err != nil {
			return fmt.Errorf("mamba repeat B: %w", err)
		}
	}
	if err := be.SliceCols(p.dtRaw, sv.proj, c.DInner()+c.ConvDim()); err != nil {
		return fmt.Errorf("mamba split dt: %w", err)
	}
	if err := be.DtSoftplus(p.dt, p.dtRaw, mx.dtBias.data()); err != nil {
		return fmt.Errorf("mamba dt softplus: %w", err)
	}
	return nil
}

// gatedNorm writes the gate z (a slice of the saved in_proj output) and
// the gated norm's output yn.
func (ds *DeviceStudent) gatedNorm(p *devPlan, mx *devMixer, sv *layerSaved) error {
	c := mx.cfg
	if err := ds.be.SliceCols(p.z, sv.proj, 0); err != nil {
		return fmt.Errorf("mamba split z: %w", err)
	}
	if err := ds.be.GatedRMSNorm(p.yn, sv.yFlat, p.z, mx.normW.Data, c.DInner()/c.NGroups, c.NormEps); err != nil {
		return fmt.Errorf("mamba gated norm: %w", err)
	}
	return nil
}

// mlpForward writes p.mlpOut from src: fc2(act(fc1 src)) or
// down(silu(gate src)·up src), saving the activation's input.
func (ds *DeviceStudent) mlpForward(p *devPlan, l *devLayer, sv *layerSaved, src kernels.Tensor) error {
	be, s := ds.be, ds.sizes
	if err := ds.linear(p, sv.up, src, &l.up); err != nil {
		return fmt.Errorf("mlp up projection: %w", err)
	}
	if s.gated {
		if err := be.SliceCols(p.gate, sv.up, 0); err != nil {
			return fmt.Errorf("mlp split gate: %w", err)
		}
		if err := be.SliceCols(p.lin, sv.up, s.inter); err != nil {
			return fmt.Errorf("mlp split up: %w", err)
		}
		if err := be.SiLU(p.gate, p.gate); err != nil {
			return fmt.Errorf("mlp silu: %w", err)
		}
		if err := be.Mul(p.act, p.gate, p.lin); err != nil {
			return fmt.Errorf("mlp gate product: %w", err)
		}
	} else if err := be.GELU(p.act, sv.up, kernelGELU(s.act)); err != nil {
		return fmt.Errorf("mlp gelu: %w", err)
	}
	if err := ds.linear(p, p.mlpOut, p.act, &l.down); err != nil {
		return fmt.Errorf("mlp down projection: %w", err)
	}
	return nil
}

// connectorForward runs the connector on one image's tower features and
// writes its rows into the decoder's input x0 at the image's place.
func (ds *DeviceStudent) connectorForward(p *devPlan, img *imageBufs, x0 kernels.Tensor) error {
	if err := ds.linear(p, img.c1, img.feats, &ds.conn.fc1); err != nil {
		return fmt.Errorf("connector linear 0: %w", err)
	}
	if err := ds.be.GELU(p.g, img.c1, kernels.GELUErf); err != nil {
		return fmt.Errorf("connector gelu: %w", err)
	}
	if err := ds.linear(p, p.imgOut, p.g, &ds.conn.fc2); err != nil {
		return fmt.Errorf("connector linear 2: %w", err)
	}
	if err := ds.rows.CopyRows(x0, img.start, p.imgOut, 0, ds.ImageTokens()); err != nil {
		return fmt.Errorf("splice image rows: %w", err)
	}
	return nil
}

// headForward writes the logits from the last layer's output.
func (ds *DeviceStudent) headForward(p *devPlan) error {
	if err := ds.final.apply(ds.be, p.h, p.x[len(ds.layers)]); err != nil {
		return fmt.Errorf("final norm: %w", err)
	}
	if err := ds.linear(p, p.logits, p.h, &ds.head); err != nil {
		return fmt.Errorf("lm_head: %w", err)
	}
	return nil
}

// forwardLayers runs every decoder layer from p.x[0], saving what
// backward reads (in recomputation, only the layer inputs p.x stay).
func (ds *DeviceStudent) forwardLayers(p *devPlan, drop *devDrop) error {
	for i, l := range ds.layers {
		if err := ds.layerForward(p, l, p.x[i], p.x[i+1], p.savedFor(l), drop); err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
	}
	return ds.headForward(p)
}
