package distill

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/model"
	"github.com/matsurgery/matsurgery/optim"
)

// BenchOptions describe BenchStep's measurement.
type BenchOptions struct {
	// Teacher and Student are the checkpoints (the student a hybrid of the
	// teacher); Backend runs both (a kernels.Trainer).
	Teacher, Student string
	Backend          kernels.Backend
	// SeqLen is the sample's spliced length: one image and SeqLen −
	// ImageTokens text tokens (0: 1428, the recipe's max length).
	SeqLen int
	// Precision and Recompute are the device student's (DeviceOptions).
	Precision string
	Recompute bool
	// Warmup updates run first, unmeasured (0: 2); Steps are measured
	// (0: 5). Each update is one sample: the teacher's forward, the
	// student's forward and backward, the losses and AdamW.
	Warmup, Steps int
	// PeakFLOPS is the device's peak rate for the MFU (0: an H200's dense
	// rate, 989e12 in bf16 and 67e12 in f32).
	PeakFLOPS float64
	// Loss weighs the terms (zero: DefaultLoss, KL + layer L2).
	Loss LossConfig
	// Dropout is the residual dropout (0: the student config's
	// resid_pdrop, as Train; negative: none).
	Dropout float64
	Seed    uint64
}

// H200 dense peak rates (NVIDIA's datasheet, without sparsity): BenchStep's
// default PeakFLOPS.
const (
	H200PeakBF16 = 989e12
	H200PeakF32  = 67e12
)

// BenchResult is what BenchStep measured.
type BenchResult struct {
	Device    string `json:"device"`
	Precision string `json:"precision"`
	Recompute bool   `json:"recompute"`
	SeqLen    int    `json:"seq_len"`
	Steps     int    `json:"steps"`
	// SecondsPerStep is the mean wall time of a measured update, of which
	// UpdateSeconds the optimiser (norm, clipping, AdamW).
	SecondsPerStep float64 `json:"seconds_per_step"`
	UpdateSeconds  float64 `json:"update_seconds"`
	TokensPerS     float64 `json:"tokens_per_s"`
	// PeakMemory is the backend's peak device memory in bytes (0: the
	// backend cannot say); Activations the student's activation arena.
	PeakMemory  int64 `json:"peak_memory_bytes"`
	Activations int64 `json:"activation_bytes"`
	// FLOPsPerStep is the model FLOPs of one update (BenchFLOPs), MFU their
	// rate over PeakFLOPS.
	FLOPsPerStep float64 `json:"flops_per_step"`
	MFU          float64 `json:"mfu"`
	PeakFLOPS    float64 `json:"peak_flops"`
	Trainable    int64   `json:"trainable_parameters"`
	Shared       bool    `json:"shared_frozen_weights"`
	LastLoss     float64 `json:"last_loss"`
}

// BenchStep measures full distillation updates on synthetic inputs (a
// seeded random image and token ids of SeqLen rows in all): the teacher
// forward, the student forward and backward with the layer term, the
// losses, gradient clipping and AdamW, all on o.Backend. It returns tokens
// per second, seconds per update, the peak device memory and the model
// FLOPs utilisation (see BenchFLOPs for the count).
func BenchStep(ctx context.Context, o BenchOptions) (*BenchResult, error) {
	if o.Backend == nil {
		return nil, errors.New("distill: bench: no backend")
	}
	if o.SeqLen == 0 {
		o.SeqLen = 1428
	}
	if o.Warmup == 0 {
		o.Warmup = 2
	}
	if o.Steps == 0 {
		o.Steps = 5
	}
	if o.Precision == "" {
		o.Precision = PrecisionF32
	}
	if o.Loss == (LossConfig{}) {
		o.Loss = DefaultLoss()
	}
	if o.Warmup < 0 || o.Steps < 0 {
		return nil, fmt.Errorf("distill: bench: %d warm-up and %d measured steps", o.Warmup, o.Steps)
	}
	mo := model.Options{}
	if o.Precision == PrecisionBF16 {
		mo.Precision = model.PrecisionBF16
	}
	teacher, err := model.Load(o.Teacher, o.Backend, mo)
	if err != nil {
		return nil, fmt.Errorf("distill: bench: teacher: %w", err)
	}
	defer teacher.Close()
	dropout := max(o.Dropout, 0)
	if o.Dropout == 0 {
		cfg, err := formats.ReadModelConfig(o.Student)
		if err != nil {
			return nil, fmt.Errorf("distill: bench: %w", err)
		}
		dropout = ResidDropout(cfg)
	}
	ds, err := LoadDeviceStudent(o.Student, o.Backend, teacher, DeviceOptions{Precision: o.Precision, Recompute: o.Recompute, Dropout: dropout})
	if err != nil {
		return nil, fmt.Errorf("distill: bench: %w", err)
	}
	defer ds.Close()
	F := ds.ImageTokens()
	if o.SeqLen <= F {
		return nil, fmt.Errorf("distill: bench: a sequence of %d rows leaves no room for text after the image's %d", o.SeqLen, F)
	}
	rng := rand.New(rand.NewPCG(o.Seed, 0x6d61747375726765))
	smp := DeviceSample{IDs: []int{ds.Config.ImageTokenIndex}, Labels: make([]int, o.SeqLen)}
	for range o.SeqLen - F {
		smp.IDs = append(smp.IDs, rng.IntN(ds.sizes.vocab))
	}
	vc := ds.Config.Vision
	smp.Pixels = make([]float32, vc.NumChannels*vc.ImageSize*vc.ImageSize)
	for i := range smp.Pixels {
		smp.Pixels[i] = float32(2*rng.Float64() - 1)
	}
	for i := range smp.Labels {
		smp.Labels[i] = IgnoreLabel
		if i >= F {
			smp.Labels[i] = smp.IDs[i-F+1]
		}
	}
	opt := optim.Recipe()
	res := &BenchResult{Device: o.Backend.Name(), Precision: o.Precision, Recompute: o.Recompute, SeqLen: o.SeqLen, Steps: o.Steps,
		Shared: ds.Shared}
	for _, p := range ds.params {
		res.Trainable += int64(p.host.Len())
	}
	var total, upd time.Duration
	for step := range o.Warmup + o.Steps {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		began := time.Now()
		if err := ds.ZeroGrad(); err != nil {
			return nil, err
		}
		smp.Dropout = &DropoutKey{Seed: o.Seed, Step: step}
		ls, _, err := ds.Accumulate(smp, o.Loss)
		if err != nil {
			return nil, fmt.Errorf("distill: bench: step %d: %w", step, err)
		}
		if err := o.Backend.Sync(); err != nil {
			return nil, err
		}
		mid := time.Now()
		if _, err := ds.Update(1, opt.LR, 1, opt); err != nil {
			return nil, fmt.Errorf("distill: bench: step %d: %w", step, err)
		}
		if err := o.Backend.Sync(); err != nil {
			return nil, err
		}
		if step >= o.Warmup {
			total += time.Since(began)
			upd += time.Since(mid)
		}
		res.LastLoss = ls.Total
	}
	if o.Steps > 0 {
		res.SecondsPerStep = total.Seconds() / float64(o.Steps)
		res.UpdateSeconds = upd.Seconds() / float64(o.Steps)
		res.TokensPerS = float64(o.SeqLen) / res.SecondsPerStep
	}
	if _, peak, ok := ds.DeviceMemory(); ok {
		res.PeakMemory = peak
	}
	if ds.plan != nil {
		res.Activations = ds.plan.Bytes()
	}
	res.FLOPsPerStep = BenchFLOPs(ds, teacher, o.SeqLen, 1, o.Loss.Beta != 0)
	res.PeakFLOPS = o.PeakFLOPS
	if res.PeakFLOPS == 0 {
		res.PeakFLOPS = H200PeakF32
		if o.Precision == PrecisionBF16 {
			res.PeakFLOPS = H200PeakBF16
		}
	}
	if res.SecondsPerStep > 0 {
		res.MFU = res.FLOPsPerStep / res.SecondsPerStep / res.PeakFLOPS
	}
	return res, nil
}

// BenchFLOPs counts the model FLOPs of one distillation update of a sample
// of n rows with the given number of images (a multiply-add is 2 FLOPs):
//
//   - every matrix product of a forward pass, 2·(weight elements)·(rows):
//     the teacher's vision tower (patch embedding and encoder layers up to
//     the feature layer, over its patches), connector, decoder layers and
//     head; the student's connector, decoder and head (the tower's output
//     is the teacher's); with the layer term, each Mamba layer again on
//     the teacher's input;
//   - softmax attention, 4·l²·(heads·head_dim) a layer forward (QKᵀ and
//     PV over all l² pairs: the causal half is not discounted) and twice
//     that backward;
//   - the student's backward: 2·(weight elements)·(rows) for the input
//     gradient of every product on the way from the logits down to the
//     connector, and as much again for the weight gradient of every
//     trainable matrix (mixers, connector); the layer term's backward
//     the same over its Mamba layer (its in_proj input gradient skipped);
//   - not counted: norms, activations, the conv, the scan's own products
//     (a few per cent of a Mamba layer at these sizes), the losses and
//     the optimiser; nor a recomputation's second forward (model FLOPs).
func BenchFLOPs(ds *DeviceStudent, teacher *model.Model, n, images int, layerTerm bool) float64 {
	gemm, attention := benchFLOPs(ds, teacher != nil, n, images, layerTerm)
	return gemm + attention
}

// benchFLOPs is BenchFLOPs split into the matrix products' and softmax
// attention's.
func benchFLOPs(ds *DeviceStudent, withTeacher bool, n, images int, layerTerm bool) (gemm, attention float64) {
	s := ds.sizes
	d, inter, V := float64(s.d), float64(s.inter), float64(s.vocab)
	rows := float64(n)
	dq, dkv := float64(s.dq()), float64(s.dkv())
	pAttn := d*(dq+2*dkv) + dq*d
	pMLP := 2 * d * inter
	if s.gated {
		pMLP = 3 * d * inter
	}
	var pMix, pInProj float64
	if c, ok := ds.mixerConfig(); ok {
		pInProj = float64(c.DProj()) * d
		pMix = pInProj + float64(c.DInner())*d
	}
	attn := 4 * rows * rows * dq
	head := V * d
	L := len(ds.layers)
	La := 0
	for _, l := range ds.layers {
		if l.mix == nil {
			La++
		}
	}
	Lm := L - La
	vc := ds.Config.Vision
	F := float64(ds.ImageTokens())
	N := float64(vc.NumPatches())
	vd, vI := float64(vc.HiddenSize), float64(vc.IntermediateSize)
	vl, _ := ds.Config.VisionFeatureIndex()
	img := float64(images)
	pConn := vd*d + d*d
	tower := 2 * N * (vd*float64(vc.NumChannels*vc.PatchSize*vc.PatchSize) + float64(vl)*(4*vd*vd+2*vd*vI))

	var f float64
	// The teacher: tower, connector, decoder, head.
	if withTeacher {
		f += img*(tower+2*F*pConn) + 2*rows*(float64(L)*(pAttn+pMLP)+head)
		attention += img*float64(vl)*4*N*N*vd + float64(L)*attn
	}
	// The student forward.
	studentLayers := float64(La)*pAttn + float64(Lm)*pMix + float64(L)*pMLP
	f += img*2*F*pConn + 2*rows*(studentLayers+head)
	attention += float64(La) * attn
	// The student backward: input gradients down to the connector, weight
	// gradients of the trainable matrices, attention backward.
	f += 2*rows*(studentLayers+head) + 2*rows*float64(Lm)*pMix
	attention += float64(La) * 2 * attn
	if ds.conn.trainable {
		f += img * 2 * F * (d*d + pConn)
	}
	if layerTerm && Lm > 0 {
		branchBwd := 2*rows*(pMix-pInProj) + 2*rows*pMix // out_proj input gradient; both weight gradients
		if s.gated {
			branchBwd += 2 * rows * pMLP // the MLP's input gradient leads to the mixer's output
		}
		f += float64(Lm) * (2*rows*(pMix+pMLP) + branchBwd)
	}
	return f, attention
}
