package distill

import (
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/model"
)

// The device student: the host Student's twin that runs the whole
// distillation step — the teacher's forward pass, the student's forward
// and backward passes, the losses and the optimiser — on one
// kernels.Backend that implements kernels.Trainer (the CUDA backend on a
// GPU, the CPU backend in tests). Nothing of the step goes through host
// memory but the sample's ids and pixels in, the loss values out, and,
// once an update, the few A_log values from which A = −exp(A_log) is
// recomputed (the Backend has no exponential).
//
// Files: device.go (loading, parameters, memory), device_plan.go (the
// activations of a sequence length), device_forward.go and
// device_backward.go (the blocks, forward and backward side by side with
// the host's decoder.go, mixer.go and vision.go), device_step.go (a
// sample's losses and gradients, the optimiser update), device_train.go
// (checkpoints and the training loop), device_bench.go (BenchStep).

// Precisions of the device student's matrix products.
const (
	// PrecisionF32 computes every product in float32: the parity mode,
	// whose steps equal the host Student's to float32 rounding.
	PrecisionF32 = "f32"
	// PrecisionBF16 rounds the activations and gradients that enter a
	// matrix product to bfloat16 and multiplies them with BF16 weights
	// (the trainable ones' BF16 shadows of their float32 masters),
	// accumulating in float32: the reference recipe's bf16 autocast. So
	// does softmax attention with q, k and v (its QKᵀ and PV products)
	// when the backend's attention takes BF16 (CUDA's does; on the CPU it
	// stays float32). Everything else — the scan, norms, activation
	// functions, losses, the optimiser and the masters — stays float32 or
	// wider.
	PrecisionBF16 = "bf16"
)

// DeviceOptions tune LoadDeviceStudent.
type DeviceOptions struct {
	// Precision is PrecisionF32 (also "") or PrecisionBF16.
	Precision string
	// Recompute keeps only each decoder layer's input through the forward
	// pass and runs the layer forward again in backward (activation
	// recomputation: less memory, about one more forward pass of time).
	// Results are the same bit for bit.
	Recompute bool
	// Chunk is the chunk length of the Mamba layers' chunked scan, forward
	// and backward (0: DefaultChunk).
	Chunk int
	// FreezeConnector leaves the connector out of training.
	FreezeConnector bool
	// Dropout is the residual dropout probability in training (see
	// Options.Dropout); the masks are the host's (same seeds and rule).
	Dropout float64
}

// DeviceParam is one trainable tensor on the device: the float32 master,
// its gradient, AdamW's moments and, in bf16 precision, the BF16 shadow
// the matrix products read. Data and Grad have the checkpoint's shape.
type DeviceParam struct {
	Name  string
	Shape []int
	Decay bool // weight decay (matrices only, as the host's Param)

	Data, Grad kernels.Tensor
	Shadow     kernels.Tensor // BF16, or nil
	m, v       kernels.Tensor
	host       *Param // the host mirror (checkpoints and export)
}

// DeviceStudent is a hybrid checkpoint set up for distillation on a
// backend. Its frozen weights are the base Model's (the teacher's, once
// proved byte for byte equal to the student's own; else a Model of the
// student checkpoint itself), its trainable tensors DeviceParams. Batch
// size is 1. Not safe for concurrent use, like its backend.
type DeviceStudent struct {
	Config *formats.ModelConfig
	Hybrid *formats.MambaConfig
	Dir    string
	// Shared reports that the frozen weights and the vision tower are the
	// teacher's (no second copy on the device); SharedNote says why not
	// when they are not.
	Shared     bool
	SharedNote string

	be      kernels.Backend
	tr      kernels.Trainer
	rows    kernels.RowCopier
	opts    DeviceOptions
	bf16    bool
	attn16  bool // bf16 precision and the backend's attention takes BF16 q, k, v (forward and backward)
	scan16  bool // bf16 precision and the backend's chunked scan takes BF16 x, B, C (forward and backward)
	sizes   textSizes
	teacher *model.Model // nil: no teacher (cross-entropy alone)
	base    *model.Model // frozen weights and the vision tower
	ownBase bool         // base was loaded here (Close closes it)

	embed  kernels.Tensor // [vocab, d]
	layers []*devLayer
	final  devNorm
	head   devLinear
	conn   devConnector
	params []*DeviceParam
	owned  []kernels.Tensor // what Close frees (views excluded)

	plan      *devPlan
	adamSteps int64
	gradsDone bool // ALog gradients made from the dA accumulators
	closed    bool
}

// devNorm is a frozen LayerNorm (w, b) or RMSNorm (w).
type devNorm struct {
	w, b kernels.Tensor
	rms  bool
	eps  float32
}

// devLinear is a Linear y = x·Wᵀ + b: w as the f32 products read it (F32,
// or BF16 widened exactly), w16 the BF16 weight of bf16 products; for a
// trainable one, pw and pb are the parameters (w is pw's master).
type devLinear struct {
	w, w16, b kernels.Tensor
	pw, pb    *DeviceParam
}

// devLayer is one decoder layer: frozen attention (qkv fused) or a
// trainable mixer, and the frozen MLP.
type devLayer struct {
	index            int
	inNorm, postNorm devNorm
	qkv, o           devLinear
	mix              *devMixer
	up, down         devLinear
}

// devMixer is one trainable Mamba-2 mixer. a holds A = −exp(A_log),
// refreshed after each update; dA accumulates the scan's gradient with
// respect to A over an update (the A_log gradient is dA·A).
type devMixer struct {
	cfg             kernels.Mamba2Config
	inProj, outProj devLinear
	convW, convB    *DeviceParam
	convW2, convG2  kernels.Tensor // [ConvDim, k] views of convW's master and gradient
	dtBias, aLog, d *DeviceParam
	normW           *DeviceParam
	a, dA           kernels.Tensor // [NHeads]
}

// devConnector is mlp2x_gelu on the device.
type devConnector struct {
	fc1, fc2  devLinear
	trainable bool
}

// LoadDeviceStudent reads the hybrid checkpoint in dir onto be, which must
// implement kernels.Trainer and kernels.RowCopier. teacher, when not nil,
// is the teacher loaded on be (model.Load): its frozen weights are shared
// when every frozen tensor of the student — vision tower, embeddings,
// norms, attention layers, MLPs, head — equals the teacher's byte for byte,
// and the student then takes the vision tower's output from the teacher's
// run. Otherwise the student loads its own frozen weights (a model.Model of
// dir). The DeviceStudent does not own be or teacher.
func LoadDeviceStudent(dir string, be kernels.Backend, teacher *model.Model, opts DeviceOptions) (*DeviceStudent, error) {
	ds, err := loadDeviceStudent(dir, be, teacher, opts)
	if err != nil {
		return nil, fmt.Errorf("distill: device student %s: %w", dir, err)
	}
	return ds, nil
}

func loadDeviceStudent(dir string, be kernels.Backend, teacher *model.Model, opts DeviceOptions) (_ *DeviceStudent, err error) {
	if be == nil {
		return nil, errors.New("no backend")
	}
	tr, ok := be.(kernels.Trainer)
	if !ok {
		return nil, fmt.Errorf("backend %s cannot train (it does not implement kernels.Trainer)", be.Name())
	}
	rows, ok := be.(kernels.RowCopier)
	if !ok {
		return nil, fmt.Errorf("backend %s cannot move rows (it does not implement kernels.RowCopier)", be.Name())
	}
	switch opts.Precision {
	case "":
		opts.Precision = PrecisionF32
	case PrecisionF32, PrecisionBF16:
	default:
		return nil, fmt.Errorf("precision %q: want %s or %s", opts.Precision, PrecisionF32, PrecisionBF16)
	}
	if opts.Chunk == 0 {
		opts.Chunk = DefaultChunk
	}
	if opts.Chunk < 0 {
		return nil, fmt.Errorf("chunk length %d must be positive", opts.Chunk)
	}
	if err := checkDropout(opts.Dropout); err != nil {
		return nil, err
	}
	if teacher != nil && teacher.Backend() != be {
		return nil, fmt.Errorf("the teacher runs on %s, the student on %s: both must share one backend", teacher.Backend().Name(), be.Name())
	}
	cfg, err := formats.ReadModelConfig(dir)
	if err != nil {
		return nil, err
	}
	hybrid, ok, err := formats.ReadMambaConfig(dir)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("no %s: not a hybrid, nothing to distil into", formats.MambaConfigName)
	}
	sizes, err := textSizesOf(cfg)
	if err != nil {
		return nil, err
	}
	ds := &DeviceStudent{Config: cfg, Hybrid: hybrid, Dir: dir, be: be, tr: tr, rows: rows, opts: opts,
		bf16: opts.Precision == PrecisionBF16, sizes: sizes, teacher: teacher}
	defer func() {
		if err != nil {
			ds.Close()
		}
	}()
	ck, err := formats.Open(dir)
	if err != nil {
		return nil, err
	}
	defer ck.Close()
	if teacher != nil {
		if err := checkTeacher(teacher, ds); err != nil {
			return nil, fmt.Errorf("teacher %s: %w", teacher.Dir, err)
		}
		same, note, err := sameFrozen(ck, teacher.Dir)
		if err != nil {
			return nil, err
		}
		if same {
			ds.base, ds.Shared = teacher, true
		} else {
			ds.SharedNote = note
		}
	}
	if ds.base == nil {
		if ds.base, err = model.Load(dir, be, model.Options{Chunk: opts.Chunk}); err != nil {
			return nil, err
		}
		ds.ownBase = true
	}
	if err := ds.load(ck); err != nil {
		return nil, err
	}
	if ds.bf16 {
		ds.attn16 = attentionTakesBF16(be, tr)
		ds.scan16 = scanTakesBF16(be, tr)
	}
	return ds, nil
}

// attentionTakesBF16 reports whether the backend's softmax attention, and
// its backward, take BF16 q, k and v (the CUDA backend's do, as products
// on the tensor cores; the CPU backend's take F32 only), by running both
// on a tiny causal case.
func attentionTakesBF16(be kernels.Backend, tr kernels.Trainer) bool {
	return probe(be, func(tensor func(kernels.DType, []float32, ...int) kernels.Tensor) bool {
		shape := []int{1, 2, 1, 8}
		vals := []float32{1, -0.5, 0.25, 2, 0, 1, -1, 0.5, 0.5, 0.25, -2, 1, 1, 0, 0.5, -1}
		q, k, v := tensor(kernels.BF16, vals, shape...), tensor(kernels.BF16, vals, shape...), tensor(kernels.BF16, vals, shape...)
		out, dout := tensor(kernels.F32, vals, shape...), tensor(kernels.F32, vals, shape...)
		dq, dk, dv := tensor(kernels.F32, vals, shape...), tensor(kernels.F32, vals, shape...), tensor(kernels.F32, vals, shape...)
		if q == nil || k == nil || v == nil || out == nil || dout == nil || dq == nil || dk == nil || dv == nil {
			return false
		}
		return be.SoftmaxAttention(out, q, k, v, 0.5, true) == nil &&
			tr.SoftmaxAttentionBackward(dq, dk, dv, dout, q, k, v, out, 0.5, true) == nil
	})
}

// scanTakesBF16 reports whether the backend's chunked scan, and its
// backward, take BF16 x, B and C (the CUDA backend's do, on its
// tensor-core scan; the CPU backend's take F32 only), by running both on
// a tiny case.
func scanTakesBF16(be kernels.Backend, tr kernels.Trainer) bool {
	return probe(be, func(tensor func(kernels.DType, []float32, ...int) kernels.Tensor) bool {
		xv := []float32{1, -0.5, 0.25, 2, 0.5, 1, -1, 0.5} // [1,2,1,4]: b, l, heads, head size and d_state
		x, b, c := tensor(kernels.BF16, xv, 1, 2, 1, 4), tensor(kernels.BF16, xv, 1, 2, 1, 4), tensor(kernels.BF16, xv, 1, 2, 1, 4)
		dt, a := tensor(kernels.F32, []float32{0.5, 0.25}, 1, 2, 1), tensor(kernels.F32, []float32{-1}, 1)
		y, dy := tensor(kernels.F32, xv, 1, 2, 1, 4), tensor(kernels.F32, xv, 1, 2, 1, 4)
		dx, dB, dC := tensor(kernels.F32, xv, 1, 2, 1, 4), tensor(kernels.F32, xv, 1, 2, 1, 4), tensor(kernels.F32, xv, 1, 2, 1, 4)
		ddt, dA := tensor(kernels.F32, []float32{0, 0}, 1, 2, 1), tensor(kernels.F32, []float32{0}, 1)
		for _, t := range []kernels.Tensor{x, b, c, dt, a, y, dy, dx, dB, dC, ddt, dA} {
			if t == nil {
				return false
			}
		}
		return be.SSDChunkScan(y, x, dt, a, b, c, nil, nil, 64) == nil &&
			tr.SSDChunkScanBackward(dx, ddt, dA, dB, dC, nil, dy, x, dt, a, b, c, nil, 64) == nil
	})
}

// probe runs f with a tensor constructor (nil when an upload fails) and
// frees every tensor it made: the capability checks' tiny cases.
func probe(be kernels.Backend, f func(tensor func(kernels.DType, []float32, ...int) kernels.Tensor) bool) bool {
	var owned []kernels.Tensor
	defer func() {
		for _, t := range owned {
			be.Free(t)
		}
	}()
	return f(func(dt kernels.DType, vals []float32, shape ...int) kernels.Tensor {
		t, err := be.Upload(vals, dt, shape...)
		if err != nil {
			return nil
		}
		owned = append(owned, t)
		return t
	})
}

// checkTeacher refuses a teacher that cannot have produced the student.
func checkTeacher(m *model.Model, ds *DeviceStudent) error {
	switch {
	case m.Hybrid != nil:
		return errors.New("the teacher is itself a hybrid (it has mamba_config.json)")
	case m.NumLayers() != ds.Config.Text.NumLayers:
		return fmt.Errorf("%d decoder layers against the student's %d", m.NumLayers(), ds.Config.Text.NumLayers)
	case m.Config.Text.VocabSize != ds.sizes.vocab || m.Config.Text.HiddenSize != ds.sizes.d:
		return fmt.Errorf("hidden %d, vocab %d against the student's hidden %d, vocab %d",
			m.Config.Text.HiddenSize, m.Config.Text.VocabSize, ds.sizes.d, ds.sizes.vocab)
	case m.Config.ImageTokenIndex != ds.Config.ImageTokenIndex:
		return fmt.Errorf("image token %d against the student's %d", m.Config.ImageTokenIndex, ds.Config.ImageTokenIndex)
	}
	return nil
}

// Backend is the backend the student runs on.
func (ds *DeviceStudent) Backend() kernels.Backend { return ds.be }

// Teacher is the teacher the student was loaded with (nil: none).
func (ds *DeviceStudent) Teacher() *model.Model { return ds.teacher }

// Params lists the trainable tensors in the host Student's order: the
// connector's (unless frozen), then each Mamba layer's mixer in layer
// order, each in checkpoint order.
func (ds *DeviceStudent) Params() []*DeviceParam { return slices.Clone(ds.params) }

// HostParams are the host mirrors of Params (same order, names, shapes and
// Decay flags as the host Student's): SyncHost writes the device's values
// into their Data, LoadHost reads them back. Their Grad is nil.
func (ds *DeviceStudent) HostParams() []*Param {
	out := make([]*Param, len(ds.params))
	for i, p := range ds.params {
		out[i] = p.host
	}
	return out
}

// MambaLayers lists the Mamba-2 layers.
func (ds *DeviceStudent) MambaLayers() []int {
	var out []int
	for _, l := range ds.layers {
		if l.mix != nil {
			out = append(out, l.index)
		}
	}
	return out
}

// ImageTokens is the number of sequence rows one image becomes.
func (ds *DeviceStudent) ImageTokens() int { return ds.base.ImageTokens() }

// SequenceLength is the number of rows ids become once each image
// placeholder is replaced by ImageTokens() rows.
func (ds *DeviceStudent) SequenceLength(ids []int) int {
	n := len(ids)
	for _, id := range ids {
		if id == ds.Config.ImageTokenIndex {
			n += ds.ImageTokens() - 1
		}
	}
	return n
}

// DeviceMemory reports the backend's device memory in use now and at its
// peak (ok false when the backend cannot say: kernels.MemoryReporter).
func (ds *DeviceStudent) DeviceMemory() (inUse, peak int64, ok bool) {
	mr, ok := ds.be.(kernels.MemoryReporter)
	if !ok {
		return 0, 0, false
	}
	inUse, peak = mr.DeviceMemory()
	return inUse, peak, true
}

// Close frees the student's tensors (and the frozen weights it loaded
// itself). The backend and the teacher stay open.
func (ds *DeviceStudent) Close() error {
	if ds.closed {
		return nil
	}
	ds.closed = true
	if ds.plan != nil {
		ds.plan.free()
		ds.plan = nil
	}
	for _, t := range ds.owned {
		ds.be.Free(t)
	}
	ds.owned = nil
	if ds.ownBase && ds.base != nil {
		ds.base.Close()
	}
	ds.base = nil
	return nil
}

func (ds *DeviceStudent) alive() error {
	if ds.closed {
		return errors.New("the device student is closed")
	}
	return nil
}

// keep records a tensor the student allocated.
func (ds *DeviceStudent) keep(t kernels.Tensor) kernels.Tensor {
	ds.owned = append(ds.owned, t)
	return t
}

// upload copies host values into a new F32 tensor the student owns.
func (ds *DeviceStudent) upload(what string, host []float32, shape ...int) (kernels.Tensor, error) {
	t, err := ds.be.Upload(host, kernels.F32, shape...)
	if err != nil {
		return nil, fmt.Errorf("upload %s: %w", what, err)
	}
	return ds.keep(t), nil
}

// overwrite replaces the contents of the F32 tensor dst with host values
// (through a temporary tensor and an exact copy).
func (ds *DeviceStudent) overwrite(dst kernels.Tensor, host []float32) error {
	tmp, err := ds.be.Upload(host, kernels.F32, dst.Shape()...)
	if err != nil {
		return err
	}
	defer ds.be.Free(tmp)
	return ds.be.Convert(dst, tmp)
}

// negExp returns −exp(v) of each value, rounded to float32 (A from A_log).
func negExp(aLog []float32) ([]float32, error) {
	a := make([]float32, len(aLog))
	for i, v := range aLog {
		a[i] = float32(-math.Exp(float64(v)))
		if math.IsInf(float64(a[i]), 0) || math.IsNaN(float64(a[i])) {
			return nil, fmt.Errorf("head %d: A = −exp(%g) is not finite", i, v)
		}
	}
	return a, nil
}
