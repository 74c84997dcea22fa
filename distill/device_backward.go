package distill

import (
	"fmt"

	"github.com/matsurgery/matsurgery/kernels"
)

// The device student's backward blocks: the host's layerBackward,
// mixer.backward, headBackward and connector.backward on backend tensors.
// Frozen weights get no gradient; gradients flow through them to the
// activations. Parameter gradients are accumulated (an update's samples
// add up); every activation gradient is written.

// inputGrad writes dx = dy·W, the gradient of a Linear's input (dy may
// already be a bf16 operand from lowp).
func (ds *DeviceStudent) inputGrad(p *devPlan, dx, dy kernels.Tensor, l *devLinear) error {
	w := l.w
	if ds.bf16 {
		var err error
		if dy, err = ds.lowp(p, dy, lowA); err != nil {
			return err
		}
		w = l.w16
	}
	return ds.be.MatMul(dx, dy, w, false)
}

// weightGrad accumulates a trainable Linear's weight gradient dyᵀ·x and
// bias gradient Σ_rows dy (dy and x may already be bf16 operands; the
// bias sum reads dy32, the float32 gradient).
func (ds *DeviceStudent) weightGrad(p *devPlan, l *devLinear, dy, dy32, x kernels.Tensor) error {
	var err error
	if dy, err = ds.lowp(p, dy, lowA); err != nil {
		return err
	}
	if x, err = ds.lowp(p, x, lowB); err != nil {
		return err
	}
	if err := ds.tr.MatMulAT(l.pw.Grad, dy, x, true); err != nil {
		return fmt.Errorf("weight gradient: %w", err)
	}
	if l.pb != nil {
		if err := ds.tr.SumRows(l.pb.Grad, dy32, true); err != nil {
			return fmt.Errorf("bias gradient: %w", err)
		}
	}
	return nil
}

// headBackward writes into dx the gradient of the last layer's output
// given p.dlogits.
func (ds *DeviceStudent) headBackward(p *devPlan, dx kernels.Tensor) error {
	if err := ds.inputGrad(p, p.dh, p.dlogits, &ds.head); err != nil {
		return fmt.Errorf("lm_head backward: %w", err)
	}
	if err := ds.final.backward(ds.tr, dx, p.dh, p.x[len(ds.layers)]); err != nil {
		return fmt.Errorf("final norm backward: %w", err)
	}
	return nil
}

// layerBackward backpropagates dout through decoder layer l run on x with
// the saved activations sv: the mixer's gradients are accumulated and,
// when dx is not nil, the gradient of x is written into dx. With dx nil
// (the layer term's run on the teacher's input) only what leads to the
// mixer is computed.
func (ds *DeviceStudent) layerBackward(p *devPlan, l *devLayer, x, dout, dx kernels.Tensor, sv *layerSaved, drop *devDrop) error {
	be, tr, s := ds.be, ds.tr, ds.sizes
	if dx == nil && l.mix == nil {
		return nil
	}
	var seedMix, seedMLP uint64
	if drop != nil {
		seedMix, seedMLP = drop.seeds(l.index)
	}
	masked := func(dst, g kernels.Tensor, seed uint64) (kernels.Tensor, error) {
		if drop == nil {
			return g, nil
		}
		if err := tr.Dropout(dst, g, seed, drop.prob); err != nil {
			return nil, fmt.Errorf("dropout backward: %w", err)
		}
		return dst, nil
	}
	if !s.gated {
		dmix, err := masked(p.dmix, dout, seedMix)
		if err != nil {
			return err
		}
		if dx == nil {
			return ds.mixerBackward(p, l, x, dmix, nil, sv)
		}
		dmlp, err := masked(p.dmlp, dout, seedMLP)
		if err != nil {
			return err
		}
		if err := ds.mlpBackward(p, l, sv, dmlp, p.dhB); err != nil {
			return err
		}
		if err := ds.tokenMixerBackward(p, l, x, dmix, p.dhA, sv); err != nil {
			return err
		}
		if err := be.Add(p.dh, p.dhA, p.dhB); err != nil {
			return err
		}
		if err := l.inNorm.backward(tr, p.dtmp, p.dh, x); err != nil {
			return fmt.Errorf("input norm backward: %w", err)
		}
		return be.Add(dx, dout, p.dtmp)
	}
	dmlp, err := masked(p.dmlp, dout, seedMLP)
	if err != nil {
		return err
	}
	if err := ds.mlpBackward(p, l, sv, dmlp, p.dhB); err != nil {
		return err
	}
	if err := l.postNorm.backward(tr, p.dtmp, p.dhB, sv.mid); err != nil {
		return fmt.Errorf("post-attention norm backward: %w", err)
	}
	if err := be.Add(p.dmid, dout, p.dtmp); err != nil {
		return err
	}
	dmix, err := masked(p.dmix, p.dmid, seedMix)
	if err != nil {
		return err
	}
	if dx == nil {
		return ds.mixerBackward(p, l, x, dmix, nil, sv)
	}
	if err := ds.tokenMixerBackward(p, l, x, dmix, p.dhA, sv); err != nil {
		return err
	}
	if err := l.inNorm.backward(tr, p.dtmp, p.dhA, x); err != nil {
		return fmt.Errorf("input norm backward: %w", err)
	}
	return be.Add(dx, p.dmid, p.dtmp)
}

// mlpBackward writes dsrc, the gradient of the MLP's input, given dmlp.
func (ds *DeviceStudent) mlpBackward(p *devPlan, l *devLayer, sv *layerSaved, dmlp, dsrc kernels.Tensor) error {
	be, tr, s := ds.be, ds.tr, ds.sizes
	if err := ds.inputGrad(p, p.dact, dmlp, &l.down); err != nil {
		return fmt.Errorf("mlp down projection backward: %w", err)
	}
	if s.gated {
		// out = silu(g)·u: du = dout·silu(g), dg = (dout·u)·silu′(g).
		if err := be.SliceCols(p.gate, sv.up, 0); err != nil {
			return err
		}
		if err := be.SliceCols(p.lin, sv.up, s.inter); err != nil {
			return err
		}
		if err := be.SiLU(p.sg, p.gate); err != nil {
			return err
		}
		if err := be.Mul(p.dlin, p.dact, p.sg); err != nil {
			return err
		}
		if err := be.Mul(p.tt, p.dact, p.lin); err != nil {
			return err
		}
		if err := tr.SiLUBackward(p.dgate, p.tt, p.gate); err != nil {
			return fmt.Errorf("mlp silu backward: %w", err)
		}
		if err := tr.SetCols(p.dup, p.dgate, 0); err != nil {
			return err
		}
		if err := tr.SetCols(p.dup, p.dlin, s.inter); err != nil {
			return err
		}
	} else if err := tr.GELUBackward(p.dup, p.dact, sv.up, kernelGELU(s.act)); err != nil {
		return fmt.Errorf("mlp gelu backward: %w", err)
	}
	if err := ds.inputGrad(p, dsrc, p.dup, &l.up); err != nil {
		return fmt.Errorf("mlp up projection backward: %w", err)
	}
	return nil
}

// tokenMixerBackward writes dh, the gradient of the token mixer's input,
// given dmix (and accumulates the mixer's gradients).
func (ds *DeviceStudent) tokenMixerBackward(p *devPlan, l *devLayer, x, dmix, dh kernels.Tensor, sv *layerSaved) error {
	if l.mix != nil {
		return ds.mixerBackward(p, l, x, dmix, dh, sv)
	}
	tr, s := ds.tr, ds.sizes
	dq, dkv := s.dq(), s.dkv()
	if err := ds.inputGrad(p, p.datt, dmix, &l.o); err != nil {
		return fmt.Errorf("attention output projection backward: %w", err)
	}
	q, k, v, err := ds.attnInputs(p, sv)
	if err != nil {
		return err
	}
	if err := tr.SoftmaxAttentionBackward(p.dq4, p.dk4, p.dv4, p.datt4, q, k, v, sv.att4, attnScale(s), true); err != nil {
		return fmt.Errorf("attention backward: %w", err)
	}
	if err := tr.RoPEInverse(p.dq4, s.rotary, s.theta, 0); err != nil {
		return fmt.Errorf("rope q backward: %w", err)
	}
	if err := tr.RoPEInverse(p.dk4, s.rotary, s.theta, 0); err != nil {
		return fmt.Errorf("rope k backward: %w", err)
	}
	for _, part := range []struct {
		t    kernels.Tensor
		col0 int
	}{{p.dqf, 0}, {p.dkf, dq}, {p.dvf, dq + dkv}} {
		if err := tr.SetCols(p.dqkv, part.t, part.col0); err != nil {
			return fmt.Errorf("join q/k/v gradients: %w", err)
		}
	}
	if err := ds.inputGrad(p, dh, p.dqkv, &l.qkv); err != nil {
		return fmt.Errorf("q/k/v projections backward: %w", err)
	}
	return nil
}

// mixerBackward accumulates the gradients of every parameter of layer l's
// mixer given dmix, the gradient of its output, and writes the gradient of
// its input into dh when dh is not nil. It recomputes the mixer's input
// (the layer's input norm of x), the gate and the gated norm's output,
// and the scan's inputs from the saved in_proj and conv outputs.
func (ds *DeviceStudent) mixerBackward(p *devPlan, l *devLayer, x, dmix, dh kernels.Tensor, sv *layerSaved) error {
	be, tr, mx := ds.be, ds.tr, l.mix
	c := mx.cfg
	H, P, G, N := c.NHeads, c.HeadDim, c.NGroups, c.DState
	dInner, convDim := c.DInner(), c.ConvDim()
	step := func(what string, err error) error {
		if err != nil {
			return fmt.Errorf("mamba %s backward: %w", what, err)
		}
		return nil
	}
	if err := step("input norm", l.inNorm.apply(be, p.h, x)); err != nil {
		return err
	}
	if err := ds.gatedNorm(p, mx, sv); err != nil {
		return err
	}
	// out_proj.
	dmix16, err := ds.lowp(p, dmix, lowH)
	if err != nil {
		return err
	}
	if err := step("out_proj", ds.inputGrad(p, p.dyn, dmix16, &mx.outProj)); err != nil {
		return err
	}
	if err := step("out_proj", ds.weightGrad(p, &mx.outProj, dmix16, dmix, p.yn)); err != nil {
		return err
	}
	// Gated norm, scan, dt.
	if err := step("gated norm", tr.GatedRMSNormBackward(p.dyFlat, p.dz, mx.normW.Grad, p.dyn, sv.yFlat, p.z, mx.normW.Data, dInner/G, c.NormEps)); err != nil {
		return err
	}
	if err := ds.mixerInputs(p, mx, sv); err != nil {
		return err
	}
	x, B, C, err := ds.scanInputs(p)
	if err != nil {
		return err
	}
	if err := step("scan", tr.SSDChunkScanBackward(p.dx4, p.ddt, mx.dA, p.dB4, p.dC4, mx.d.grad(), p.dy4,
		x, p.dt, mx.a, B, C, mx.d.data(), ds.opts.Chunk)); err != nil {
		return err
	}
	if err := step("dt softplus", tr.DtSoftplusBackward(p.dRaw, mx.dtBias.grad(), p.ddt, p.dtRaw, mx.dtBias.data())); err != nil {
		return err
	}
	// Repeats, conv.
	if c.DXB/P != H {
		if err := step("repeat x", tr.SumHeads(p.dxs, p.dxFlat, c.DXB/P, H, P)); err != nil {
			return err
		}
	}
	if c.DXB/N != G {
		if err := step("repeat B", tr.SumHeads(p.dbs, p.dBFlat, c.DXB/N, G, N)); err != nil {
			return err
		}
	}
	for _, part := range []struct {
		t    kernels.Tensor
		col0 int
	}{{p.dxs, 0}, {p.dbs, c.DXB}, {p.dCFlat, 2 * c.DXB}} {
		if err := step("join x/B/C", tr.SetCols(p.dxBCc, part.t, part.col0)); err != nil {
			return err
		}
	}
	if err := step("split xBC", be.SliceCols(p.xBC, sv.proj, dInner)); err != nil {
		return err
	}
	if err := step("conv1d", tr.CausalConv1dBackward(p.dxBC, mx.convG2, mx.convB.grad(), p.dxBCc, p.xBC, mx.convW2, mx.convB.data(), true)); err != nil {
		return err
	}
	// in_proj.
	for _, part := range []struct {
		t    kernels.Tensor
		col0 int
	}{{p.dz, 0}, {p.dxBC, dInner}, {p.dRaw, dInner + convDim}} {
		if err := step("join z/xBC/dt", tr.SetCols(p.dproj, part.t, part.col0)); err != nil {
			return err
		}
	}
	dproj16, err := ds.lowp(p, p.dproj, lowH)
	if err != nil {
		return err
	}
	h, err := ds.lowp(p, p.h, lowB)
	if err != nil {
		return err
	}
	if err := step("in_proj", ds.weightGrad(p, &mx.inProj, dproj16, p.dproj, h)); err != nil {
		return err
	}
	if dh != nil {
		if err := step("in_proj", ds.inputGrad(p, dh, dproj16, &mx.inProj)); err != nil {
			return err
		}
	}
	return nil
}

// connectorBackward accumulates the connector's gradients for one image
// given dx0, the gradient of the decoder's input (the tower is frozen:
// no gradient leaves it).
func (ds *DeviceStudent) connectorBackward(p *devPlan, img *imageBufs, dx0 kernels.Tensor) error {
	be, tr := ds.be, ds.tr
	if err := ds.rows.CopyRows(p.dimg, 0, dx0, img.start, ds.ImageTokens()); err != nil {
		return fmt.Errorf("connector backward: image rows: %w", err)
	}
	dimg16, err := ds.lowp(p, p.dimg, lowH)
	if err != nil {
		return err
	}
	if err := ds.inputGrad(p, p.dg, dimg16, &ds.conn.fc2); err != nil {
		return fmt.Errorf("connector linear 2 backward: %w", err)
	}
	if err := be.GELU(p.g, img.c1, kernels.GELUErf); err != nil {
		return fmt.Errorf("connector gelu: %w", err)
	}
	if err := ds.weightGrad(p, &ds.conn.fc2, dimg16, p.dimg, p.g); err != nil {
		return fmt.Errorf("connector linear 2 backward: %w", err)
	}
	if err := tr.GELUBackward(p.dc1, p.dg, img.c1, kernels.GELUErf); err != nil {
		return fmt.Errorf("connector gelu backward: %w", err)
	}
	if err := ds.weightGrad(p, &ds.conn.fc1, p.dc1, p.dc1, img.feats); err != nil {
		return fmt.Errorf("connector linear 0 backward: %w", err)
	}
	return nil
}

// backwardLayers backpropagates p.dlogits through the head and every layer
// down to the connector. In recomputation each layer is first run forward
// again from its saved input (same dropout masks: they are a pure
// function of their seeds).
func (ds *DeviceStudent) backwardLayers(p *devPlan, drop *devDrop) error {
	cur, next := p.d0, p.d1
	if err := ds.headBackward(p, cur); err != nil {
		return err
	}
	for i := len(ds.layers) - 1; i >= 0; i-- {
		l := ds.layers[i]
		sv := p.savedFor(l)
		if ds.opts.Recompute {
			if err := ds.layerForward(p, l, p.x[i], p.reOut, sv, drop); err != nil {
				return fmt.Errorf("layer %d recomputation: %w", i, err)
			}
		}
		if err := ds.layerBackward(p, l, p.x[i], cur, next, sv, drop); err != nil {
			return fmt.Errorf("layer %d backward: %w", i, err)
		}
		cur, next = next, cur
	}
	if ds.conn.trainable {
		for k, img := range p.imgs {
			if err := ds.connectorBackward(p, img, cur); err != nil {
				return fmt.Errorf("image %d: %w", k, err)
			}
		}
	}
	return nil
}
