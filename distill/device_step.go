package distill

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/optim"
)

// DeviceSample is one training sample for the device student.
type DeviceSample struct {
	// IDs are token ids in which each image placeholder (config
	// image_token_index) stands for one image of Pixels ([channels, size,
	// size] per image, back to back, normalised).
	IDs    []int
	Pixels []float32
	// Labels are over the spliced sequence (one per row, IgnoreLabel on
	// image rows and prompt tokens; see Targets.Labels); needed when the
	// loss has cross-entropy.
	Labels []int
	// Mask selects the rows the KL term counts (nil: every row).
	Mask []bool
	// Dropout, when set and the student's dropout is not 0, applies the
	// residual dropout masks of this key (training).
	Dropout *DropoutKey
}

// ZeroGrad clears every trainable tensor's gradient (and the scan's A
// gradient accumulators): call it before an update's first sample.
func (ds *DeviceStudent) ZeroGrad() error {
	if err := ds.alive(); err != nil {
		return err
	}
	for _, p := range ds.params {
		if err := ds.tr.Fill(p.Grad, 0); err != nil {
			return fmt.Errorf("distill: zero gradient of %s: %w", p.Name, err)
		}
	}
	for _, l := range ds.layers {
		if l.mix != nil {
			if err := ds.tr.Fill(l.mix.dA, 0); err != nil {
				return fmt.Errorf("distill: zero gradient of layer %d's A: %w", l.index, err)
			}
		}
	}
	ds.gradsDone = false
	return nil
}

// Accumulate runs one sample through the teacher and the student, the
// losses of cfg (the host Objective's semantics) and the student's
// backward pass, adding its gradients to the parameters' (gradient
// accumulation: samples add up until Update). It returns the sample's
// losses and its sequence length. The step runs on the device; the loss
// values are its only synchronisations with the host.
func (ds *DeviceStudent) Accumulate(smp DeviceSample, cfg LossConfig) (Losses, int, error) {
	var ls Losses
	var n int
	err := kernels.RunPinned(ds.be, func() (err error) {
		ls, n, err = ds.accumulate(smp, cfg)
		return err
	})
	if err != nil {
		return Losses{}, 0, fmt.Errorf("distill: device step: %w", err)
	}
	return ls, n, nil
}

func (ds *DeviceStudent) accumulate(smp DeviceSample, cfg LossConfig) (Losses, int, error) {
	var ls Losses
	if err := ds.alive(); err != nil {
		return ls, 0, err
	}
	if ds.gradsDone {
		return ls, 0, errors.New("the gradients were already finished for an update: ZeroGrad first")
	}
	for _, w := range []float64{cfg.Alpha, cfg.Beta, cfg.Gamma} {
		if math.IsNaN(w) || math.IsInf(w, 0) || w < 0 {
			return ls, 0, fmt.Errorf("loss weights α=%g β=%g γ=%g must be finite and not negative", cfg.Alpha, cfg.Beta, cfg.Gamma)
		}
	}
	if cfg.Alpha != 0 && (!(cfg.Temperature > 0) || math.IsInf(cfg.Temperature, 0)) {
		return ls, 0, fmt.Errorf("kl: temperature %g must be a positive number", cfg.Temperature)
	}
	if cfg.Beta != 0 {
		switch cfg.Distance {
		case L2Norm, SquaredL2, MeanSquared:
		default:
			return ls, 0, fmt.Errorf("layer distance: unknown form %v", cfg.Distance)
		}
	}
	if cfg.Beta != 0 && len(ds.MambaLayers()) == 0 {
		return ls, 0, errors.New("β ≠ 0 but the student has no Mamba layer to compare with the teacher's")
	}
	needTeacher := cfg.Alpha != 0 || cfg.Beta != 0
	if needTeacher && ds.teacher == nil {
		return ls, 0, errors.New("the KL and layer terms need a teacher: load the student with one")
	}
	tok, starts, err := ds.tokens(smp)
	if err != nil {
		return ls, 0, err
	}
	n := len(tok)
	if cfg.Gamma != 0 && len(smp.Labels) != n {
		return ls, 0, fmt.Errorf("labels cover %d rows, the sequence %d", len(smp.Labels), n)
	}
	if cfg.Alpha != 0 && smp.Mask != nil && len(smp.Mask) != n {
		return ls, 0, fmt.Errorf("kl: mask has %d rows, logits %d", len(smp.Mask), n)
	}
	p, err := ds.planFor(n, len(starts), cfg.Beta != 0)
	if err != nil {
		return ls, 0, err
	}
	for i, s := range starts {
		p.imgs[i].start = s
	}
	var drop, branchDrop *devDrop
	if smp.Dropout != nil && ds.opts.Dropout > 0 {
		drop = &devDrop{key: *smp.Dropout, prob: ds.opts.Dropout}
		branchDrop = &devDrop{key: *smp.Dropout, prob: ds.opts.Dropout, branch: true}
	}

	// Inputs, the teacher, the student.
	if err := ds.embeds(p, smp, tok, needTeacher); err != nil {
		return ls, 0, err
	}
	var tlogits kernels.Tensor
	if needTeacher {
		if tlogits, err = ds.teacherForward(p, smp, cfg.Beta != 0); err != nil {
			return ls, 0, err
		}
	}
	if err := ds.forwardLayers(p, drop); err != nil {
		return ls, 0, err
	}
	mamba := ds.MambaLayers()
	if cfg.Beta != 0 {
		for _, l := range mamba {
			b := p.branches[l]
			if err := ds.layerForward(p, ds.layers[l], b.tIn, b.out, b.saved, branchDrop); err != nil {
				return ls, 0, fmt.Errorf("layer %d on the teacher's input: %w", l, err)
			}
		}
	}

	// Losses and their gradients.
	useLogits := cfg.Alpha != 0 || cfg.Gamma != 0
	if useLogits {
		if err := ds.tr.Fill(p.dlogits, 0); err != nil {
			return ls, 0, err
		}
	}
	if cfg.Alpha != 0 {
		if ls.KL, err = ds.tr.KLDivergence(p.dlogits, p.logits, tlogits, cfg.Temperature, smp.Mask, float32(cfg.Alpha)); err != nil {
			return ls, 0, fmt.Errorf("kl: %w", err)
		}
	}
	if cfg.Gamma != 0 {
		if ls.CE, err = ds.tr.CrossEntropy(p.dlogits, p.logits, smp.Labels, float32(cfg.Gamma)); err != nil {
			return ls, 0, fmt.Errorf("cross-entropy: %w", err)
		}
	}
	if cfg.Beta != 0 {
		ls.Layers = map[int]float64{}
		for _, l := range mamba {
			b := p.branches[l]
			if err := ds.tr.Fill(b.grad, 0); err != nil {
				return ls, 0, err
			}
			dist, err := ds.tr.LayerDistance(b.grad, b.out, b.tOut, kernels.Distance(cfg.Distance), float32(cfg.Beta))
			if err != nil {
				return ls, 0, fmt.Errorf("layer %d distance: %w", l, err)
			}
			ls.Layers[l] = dist
			ls.Layer += dist
		}
	}
	ls.Total = cfg.Alpha*ls.KL + cfg.Beta*ls.Layer + cfg.Gamma*ls.CE
	if math.IsNaN(ls.Total) || math.IsInf(ls.Total, 0) {
		return ls, 0, fmt.Errorf("the loss is %g (KL %g, layer %g, CE %g)", ls.Total, ls.KL, ls.Layer, ls.CE)
	}

	// Backward: the logits path down to the connector, then each layer
	// term into its mixer.
	if useLogits {
		if err := ds.backwardLayers(p, drop); err != nil {
			return ls, 0, err
		}
	}
	if cfg.Beta != 0 {
		for _, l := range slices.Sorted(maps.Keys(p.branches)) {
			b := p.branches[l]
			layer := ds.layers[l]
			if ds.opts.Recompute {
				if err := ds.layerForward(p, layer, b.tIn, b.out, b.saved, branchDrop); err != nil {
					return ls, 0, fmt.Errorf("layer %d on the teacher's input, recomputation: %w", l, err)
				}
			}
			if err := ds.layerBackward(p, layer, b.tIn, b.grad, nil, b.saved, branchDrop); err != nil {
				return ls, 0, fmt.Errorf("layer %d term backward: %w", l, err)
			}
		}
	}
	return ls, n, nil
}

// tokens checks the sample's ids and pixels and lays the ids over the
// spliced sequence (0 on image rows, overwritten by the image rows),
// returning each image's first row.
func (ds *DeviceStudent) tokens(smp DeviceSample) ([]int32, []int, error) {
	if len(smp.IDs) == 0 {
		return nil, nil, errors.New("no input ids")
	}
	F := ds.ImageTokens()
	var tok []int32
	var starts []int
	for i, id := range smp.IDs {
		switch {
		case id == ds.Config.ImageTokenIndex:
			starts = append(starts, len(tok))
			for range F {
				tok = append(tok, 0)
			}
		case id < 0 || id >= ds.sizes.vocab:
			return nil, nil, fmt.Errorf("input id %d (position %d) is outside the vocabulary [0, %d) and is not the image placeholder %d",
				id, i, ds.sizes.vocab, ds.Config.ImageTokenIndex)
		default:
			tok = append(tok, int32(id))
		}
	}
	per := ds.Config.Vision.NumChannels * ds.Config.Vision.ImageSize * ds.Config.Vision.ImageSize
	if len(smp.Pixels) != len(starts)*per {
		return nil, nil, fmt.Errorf("%d image placeholders need %d pixel values (%d per image), got %d", len(starts), len(starts)*per, per, len(smp.Pixels))
	}
	return tok, starts, nil
}

// embeds writes the student's decoder input p.x[0] (token rows, then each
// image's connector rows) and, when the teacher shares the student's
// frozen weights and is needed, the teacher's input p.embT (the same
// token rows and the teacher connector's image rows): the vision tower
// runs once per image for both.
func (ds *DeviceStudent) embeds(p *devPlan, smp DeviceSample, tok []int32, needTeacher bool) error {
	be := ds.be
	if err := ds.rows.GatherRows(p.x[0], ds.embed, tok); err != nil {
		return fmt.Errorf("token embeddings: %w", err)
	}
	teacherRows := needTeacher && ds.Shared
	if teacherRows {
		if err := be.Convert(p.embT, p.x[0]); err != nil {
			return fmt.Errorf("token embeddings: %w", err)
		}
	}
	per := len(smp.Pixels) / max(1, len(p.imgs))
	for i, img := range p.imgs {
		trows, err := ds.base.ImageFeatures(smp.Pixels[i*per : (i+1)*per])
		if err != nil {
			return fmt.Errorf("image %d: %w", i, err)
		}
		feats := ds.base.VisionFeatures()
		if feats == nil {
			return fmt.Errorf("image %d: the base model kept no vision features", i)
		}
		if err := be.Convert(img.feats, feats); err != nil {
			return fmt.Errorf("image %d: vision features: %w", i, err)
		}
		if teacherRows {
			if err := ds.rows.CopyRows(p.embT, img.start, trows, 0, ds.ImageTokens()); err != nil {
				return fmt.Errorf("image %d: teacher rows: %w", i, err)
			}
		}
		if err := ds.connectorForward(p, img, p.x[0]); err != nil {
			return fmt.Errorf("image %d: %w", i, err)
		}
	}
	return nil
}

// teacherForward runs the teacher, copying its input to and output of each
// Mamba layer into the layer term's buffers when layers is set, and
// returns its logits (owned by the teacher; valid until its next run).
func (ds *DeviceStudent) teacherForward(p *devPlan, smp DeviceSample, layers bool) (kernels.Tensor, error) {
	hook := func(l int, in, out kernels.Tensor) error {
		b, ok := p.branches[l]
		if !ok || !layers {
			return nil
		}
		if err := ds.be.Convert(b.tIn, in); err != nil {
			return err
		}
		return ds.be.Convert(b.tOut, out)
	}
	var logits kernels.Tensor
	var err error
	if ds.Shared {
		logits, err = ds.teacher.ForwardEmbeds(p.embT, hook)
	} else {
		logits, err = ds.teacher.ForwardHooked(smp.Pixels, smp.IDs, hook)
	}
	if err != nil {
		return nil, fmt.Errorf("teacher: %w", err)
	}
	if !slices.Equal(logits.Shape(), p.logits.Shape()) {
		return nil, fmt.Errorf("teacher: logits %v, the student's %v", logits.Shape(), p.logits.Shape())
	}
	return logits, nil
}

// finishGrads makes the A_log gradients from the scan's A gradients:
// ∂L/∂A_log = ∂L/∂A · A (A = −exp(A_log) is fixed within an update).
func (ds *DeviceStudent) finishGrads() error {
	if ds.gradsDone {
		return nil
	}
	for _, l := range ds.layers {
		if mx := l.mix; mx != nil {
			if err := ds.be.Mul(mx.aLog.Grad, mx.dA, mx.a); err != nil {
				return fmt.Errorf("layer %d: A_log gradient: %w", l.index, err)
			}
		}
	}
	ds.gradsDone = true
	return nil
}

// Gradients finishes the update's gradients and returns the gradient
// tensors in Params' order (for a data-parallel all-reduce before Update;
// a reduced gradient written back into them is what Update uses).
func (ds *DeviceStudent) Gradients() ([]kernels.Tensor, error) {
	if err := ds.finishGrads(); err != nil {
		return nil, fmt.Errorf("distill: %w", err)
	}
	out := make([]kernels.Tensor, len(ds.params))
	for i, p := range ds.params {
		out[i] = p.Grad
	}
	return out, nil
}

// Update ends an update of samples samples: it averages the accumulated
// gradients (×1/samples, as the host trainer), measures their global norm
// (SumSquares, float64), clips to maxNorm (≤ 0: no clipping; the
// coefficient of torch.nn.utils.clip_grad_norm_ with its 1e-6) and applies
// AdamW with opt's hyperparameters at learning rate lr and each
// parameter's Decay flag, refreshing the bf16 shadows and A = −exp(A_log).
// It returns the norm measured before clipping. A non-finite gradient is
// an error that names its parameter, and then nothing is updated.
func (ds *DeviceStudent) Update(samples int, lr, maxNorm float64, opt *optim.AdamW) (float64, error) {
	var norm float64
	err := kernels.RunPinned(ds.be, func() (err error) {
		norm, err = ds.update(samples, lr, maxNorm, opt)
		return err
	})
	if err != nil {
		return norm, fmt.Errorf("distill: device update %d: %w", ds.adamSteps+1, err)
	}
	return norm, nil
}

// clipEps is torch.nn.utils.clip_grad_norm_'s (and optim's) epsilon.
const clipEps = 1e-6

func (ds *DeviceStudent) update(samples int, lr, maxNorm float64, opt *optim.AdamW) (float64, error) {
	if err := ds.alive(); err != nil {
		return 0, err
	}
	if samples <= 0 {
		return 0, fmt.Errorf("%d samples", samples)
	}
	if math.IsNaN(lr) || math.IsInf(lr, 0) || lr < 0 {
		return 0, fmt.Errorf("learning rate %g is not a non-negative finite number", lr)
	}
	if opt == nil {
		return 0, errors.New("no optimiser settings")
	}
	finite := func(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
	if !(opt.Beta1 >= 0 && opt.Beta1 < 1) || !(opt.Beta2 >= 0 && opt.Beta2 < 1) || !finite(opt.Eps) || opt.Eps < 0 ||
		!finite(opt.WeightDecay) || opt.WeightDecay < 0 {
		return 0, fmt.Errorf("adamw settings betas (%g, %g), eps %g, weight decay %g are out of range", opt.Beta1, opt.Beta2, opt.Eps, opt.WeightDecay)
	}
	if err := ds.finishGrads(); err != nil {
		return 0, err
	}
	inv := float32(1 / float64(samples))
	var total float64
	for _, p := range ds.params {
		if err := ds.be.Scale(p.Grad, p.Grad, inv); err != nil {
			return 0, fmt.Errorf("%s: average gradient: %w", p.Name, err)
		}
		ss, err := ds.tr.SumSquares(p.Grad)
		if err == nil && (math.IsNaN(ss) || math.IsInf(ss, 0)) {
			err = errors.New("not finite")
		}
		if err != nil {
			return 0, fmt.Errorf("parameter %s: gradient: %w: %w", p.Name, err, optim.ErrNonFinite)
		}
		total += ss
	}
	norm := math.Sqrt(total)
	scale := 1.0
	if maxNorm > 0 {
		if c := maxNorm / (norm + clipEps); c < 1 {
			scale = c
		}
	}
	ds.adamSteps++
	s := kernels.AdamWStep{LR: lr, Beta1: opt.Beta1, Beta2: opt.Beta2, Eps: opt.Eps, WeightDecay: opt.WeightDecay,
		Step: ds.adamSteps, GradScale: scale}
	for _, p := range ds.params {
		if err := ds.tr.AdamW(p.Data, p.Grad, p.m, p.v, p.Shadow, p.Decay, s); err != nil {
			ds.adamSteps--
			return norm, fmt.Errorf("parameter %s: adamw: %w", p.Name, err)
		}
	}
	if err := ds.refreshA(); err != nil {
		return norm, err
	}
	return norm, nil
}

// refreshA recomputes A = −exp(A_log) from the masters (the backend has no
// exponential: NHeads values per layer go through the host).
func (ds *DeviceStudent) refreshA() error {
	for _, l := range ds.layers {
		mx := l.mix
		if mx == nil {
			continue
		}
		v, err := ds.be.Download(mx.aLog.Data)
		if err != nil {
			return fmt.Errorf("layer %d: A_log: %w", l.index, err)
		}
		a, err := negExp(v)
		if err != nil {
			return fmt.Errorf("tensor %s: %w", mx.aLog.Name, err)
		}
		if err := ds.overwrite(mx.a, a); err != nil {
			return fmt.Errorf("layer %d: A: %w", l.index, err)
		}
	}
	return nil
}

// SyncHost downloads the masters into the host mirrors (HostParams) and,
// when opt is not nil, the update count and AdamW's moments into opt (for
// optim's Save): what a checkpoint or an export writes.
func (ds *DeviceStudent) SyncHost(opt *optim.AdamW) error {
	if err := ds.alive(); err != nil {
		return err
	}
	var ms []optim.Moments
	for _, p := range ds.params {
		v, err := ds.be.Download(p.Data)
		if err != nil {
			return fmt.Errorf("distill: download %s: %w", p.Name, err)
		}
		copy(p.host.Data, v)
		if opt == nil || ds.adamSteps == 0 {
			continue
		}
		m, err := ds.be.Download(p.m)
		if err != nil {
			return fmt.Errorf("distill: download %s's moments: %w", p.Name, err)
		}
		vv, err := ds.be.Download(p.v)
		if err != nil {
			return fmt.Errorf("distill: download %s's moments: %w", p.Name, err)
		}
		ms = append(ms, optim.Moments{Name: p.Name, Decay: p.Decay, M: m, V: vv})
	}
	if opt != nil {
		if err := opt.SetState(ds.adamSteps, ms); err != nil {
			return fmt.Errorf("distill: %w", err)
		}
	}
	return nil
}

// LoadHost uploads the host mirrors' values (HostParams) into the masters
// and their shadows and, when opt is not nil, its update count and
// moments (a resumed checkpoint's).
func (ds *DeviceStudent) LoadHost(opt *optim.AdamW) error {
	if err := ds.alive(); err != nil {
		return err
	}
	var steps int64
	var ms []optim.Moments
	if opt != nil {
		steps, ms = opt.State()
		if len(ms) != 0 && len(ms) != len(ds.params) {
			return fmt.Errorf("distill: optimiser state holds %d parameters, the student trains %d", len(ms), len(ds.params))
		}
	}
	for i, p := range ds.params {
		if err := ds.overwrite(p.Data, p.host.Data); err != nil {
			return fmt.Errorf("distill: upload %s: %w", p.Name, err)
		}
		if p.Shadow != nil {
			if err := ds.be.Convert(p.Shadow, p.Data); err != nil {
				return fmt.Errorf("distill: %s's bf16 shadow: %w", p.Name, err)
			}
		}
		if opt == nil {
			continue
		}
		m, v := make([]float32, p.host.Len()), make([]float32, p.host.Len())
		if len(ms) != 0 {
			if ms[i].Name != p.Name || ms[i].Decay != p.Decay || len(ms[i].M) != p.host.Len() {
				return fmt.Errorf("distill: optimiser state %d is %s (%d values, decay %v), the student's parameter %s (%d, %v)",
					i, ms[i].Name, len(ms[i].M), ms[i].Decay, p.Name, p.host.Len(), p.Decay)
			}
			m, v = ms[i].M, ms[i].V
		}
		if err := ds.overwrite(p.m, m); err != nil {
			return fmt.Errorf("distill: upload %s's moments: %w", p.Name, err)
		}
		if err := ds.overwrite(p.v, v); err != nil {
			return fmt.Errorf("distill: upload %s's moments: %w", p.Name, err)
		}
	}
	if opt != nil {
		ds.adamSteps = steps
	}
	return ds.refreshA()
}
