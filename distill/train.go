package distill

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/matsurgery/matsurgery/dataset"
	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/cpu"
	"github.com/matsurgery/matsurgery/model"
	"github.com/matsurgery/matsurgery/optim"
	"github.com/matsurgery/matsurgery/trainlog"
)

// TrainOptions describe a distillation run (SPEC §1's single stage). The
// zero values of the numeric fields take the reference recipe's settings
// (see Recipe); Train fills them in.
type TrainOptions struct {
	// Teacher is the original TinyLLaVA checkpoint; needed unless the loss
	// is cross-entropy only (Loss.Alpha = Loss.Beta = 0).
	Teacher string
	// Student is the hybrid checkpoint convert wrote.
	Student string
	// Data is a LLaVA-format JSON (or JSON Lines) file; Images the
	// directory its image paths are relative to ("" = the file's).
	Data, Images string
	// Out is the run directory: metrics.jsonl, checkpoints/, losses.png,
	// run.json and the exported hybrid in final/.
	Out string

	// Steps is the number of optimiser updates; when 0, Epochs passes over
	// the data (when both are 0, one epoch).
	Steps  int
	Epochs int
	// Batch samples per micro-batch and Accum micro-batches per update:
	// an update averages the gradients of Batch·Accum samples.
	Batch, Accum int

	// LR is the peak learning rate; Schedule the schedule around it
	// (Kind "" = wsd). Its TotalSteps is set to the run's steps; when its
	// WarmupSteps is 0, WarmupFraction of the steps warm up.
	LR             float64
	Schedule       optim.ScheduleConfig
	WarmupFraction float64
	// MaxGradNorm clips the global gradient norm (0: the recipe's 0.1;
	// negative: no clipping).
	MaxGradNorm float64
	// Loss weighs the terms; MaskAnswers counts only the logits rows that
	// predict answer tokens in the KL term (the reference counts all).
	Loss        LossConfig
	MaskAnswers bool
	// FreezeConnector trains the Mamba mixers only.
	FreezeConnector bool
	// TrainAll trains every parameter but the vision tower's, on the
	// cross-entropy alone (no teacher): Student may then be a plain
	// TinyLLaVA checkpoint (see train_full.go). The loss must be Gamma
	// only; the zero LossConfig means γ = 1.
	TrainAll bool
	// Dropout is the student's residual dropout probability in training
	// (Options.Dropout): 0 takes the reference's, the student config's
	// resid_pdrop for Phi and none for Llama and Qwen2 (ResidDropout);
	// negative turns it off. Its masks are a pure function of (Seed, update,
	// sample within the update, layer, branch), so a resumed run draws the
	// same ones. TrainAll has no dropout: it refuses a positive value.
	Dropout float64

	// Seed decides the data order and the dropout masks.
	Seed uint64
	// SaveEvery writes a checkpoint every so many updates (0: only at the
	// end and on interruption); Keep keeps that many of the latest (0: 2).
	SaveEvery, Keep int
	// Resume continues the run in Out from its latest checkpoint.
	Resume bool
	// MaxLength cuts samples to this many tokens (0: the checkpoint's
	// tokenizer_model_max_length).
	MaxLength int
	// OnBadRecord skips bad records or stops the run.
	OnBadRecord dataset.Policy
	// Workers bounds the goroutines of each operation (0: GOMAXPROCS).
	Workers int

	// Device runs the whole step on a device through a DeviceStudent
	// (device.go): "cuda" or "cuda:N" opens the GPU (package backends) and
	// the teacher runs there too. "" and "cpu" train the host Student.
	Device string
	// Backend, when set, is the backend a DeviceStudent runs on instead of
	// Device's (the caller's, left open): the CPU backend runs the device
	// code path on any machine.
	Backend kernels.Backend
	// Precision of a device student's matrix products (and the teacher's):
	// PrecisionF32 (the default) or PrecisionBF16. The host Student
	// computes in float32 only.
	Precision string
	// Recompute runs a device student with activation recomputation
	// (DeviceOptions.Recompute).
	Recompute bool
	// GPUs, when 2 or more, trains data-parallel on the host's first GPUs
	// GPUs, joined by NCCL (cuda.NewGroup; parallel_train.go): each update's
	// samples are shared out between them and their gradients summed, so
	// the run is a one-GPU run of the same global batch up to the order of
	// the float32 sums, and its checkpoints resume on any number of GPUs.
	// Device must then be "" or "cuda". 0 and 1: one device, as Device says.
	GPUs int
	// Ranks, when set, is the data-parallel group to train on instead of
	// GPUs' (the caller's, left open): CPU backends joined by a host
	// all-reduce run the data-parallel path on any machine.
	Ranks Ranks

	// NoExport leaves out the final hybrid checkpoint (final/).
	NoExport bool
	// Version is written into the export's matsurgery.json.
	Version string

	// OnStep, when set, sees every update after it is logged.
	OnStep func(StepReport)
}

// StepReport is what one update did, for a progress display.
type StepReport struct {
	Step, Steps  int // updates done, and in all
	Record       trainlog.Record
	Skipped      int // samples of this update left out (bad records)
	ResumedAt    int // the step the run resumed from (0: a fresh run)
	TokensInStep int
}

// TrainResult summarises a run.
type TrainResult struct {
	Out         string     `json:"out"`
	Steps       int        `json:"steps"`       // updates done in all
	StepsTotal  int        `json:"steps_total"` // updates planned
	ResumedFrom int        `json:"resumed_from"`
	Interrupted bool       `json:"interrupted"`
	Samples     int        `json:"samples"` // dataset size
	Skipped     int        `json:"skipped"` // bad records left out
	Final       LossValues `json:"final_losses"`
	FirstLoss   float64    `json:"first_loss"` // total loss of this run's first update
	TokensPerS  float64    `json:"tokens_per_s"`
	Seconds     float64    `json:"seconds"`
	Checkpoint  string     `json:"checkpoint"` // the last checkpoint written
	Export      string     `json:"export,omitempty"`
	Metrics     string     `json:"metrics"`
	Plot        string     `json:"plot,omitempty"`
	Trainable   int64      `json:"trainable_parameters"`
	// Device is the backend a device student ran on ("" for the host
	// Student; "2 × cuda (NVIDIA H200)" for a data-parallel run), Ranks
	// their number; PeakDeviceMemory its peak memory in bytes, the largest
	// rank's (0: unknown).
	Device           string `json:"device,omitempty"`
	Ranks            int    `json:"ranks,omitempty"`
	PeakDeviceMemory int64  `json:"peak_device_memory,omitempty"`
}

// Recipe returns the reference recipe's options (SPEC §1): AdamW at 2e-4
// under a warmup–stable–decay schedule (10% warmup, 10% cosine decay),
// gradient clipping at 0.1, KL + layer L2 with no cross-entropy, one epoch,
// a global batch of 64 on one machine (1 × 64 accumulation).
func Recipe() TrainOptions {
	return TrainOptions{
		Batch: 1, Accum: 64, LR: 2e-4,
		Schedule:       optim.ScheduleConfig{Kind: "wsd", DecayFraction: 0.1, DecayShape: "cosine"},
		WarmupFraction: 0.1, MaxGradNorm: 0.1, Loss: DefaultLoss(), Keep: 2,
	}
}

// trainer holds a run's pieces.
type trainer struct {
	opts    TrainOptions
	student *Student
	dev     *DeviceStudent   // a device run (TrainOptions.Device or Backend)
	par     *parallelTrainer // a data-parallel run (TrainOptions.GPUs or Ranks)
	ownBE   kernels.Backend  // the backend a device run opened (closed with it)
	full    *fullModel       // TrainAll
	params  []*Param
	oparams []optim.Param
	teacher *model.Model
	tbe     kernels.Backend
	data    *dataset.Dataset
	batcher *dataset.Batcher
	opt     *optim.AdamW
	sched   optim.Schedule
	steps   int
	log     *trainlog.Writer
	dir     runDir
}

// Train runs (or resumes) a distillation. Cancelling ctx stops it between
// samples: the last completed update is checkpointed and the result says
// Interrupted (the error is nil).
//
// On the host (the default) everything computes in float32 with float64
// sums, on float32 master weights; the reference's bf16 autocast is a
// device student's Precision. Not done: dropout when TrainAll, and
// TrainAll on a device.
func Train(ctx context.Context, opts TrainOptions) (*TrainResult, error) {
	t, err := newTrainer(opts)
	if err != nil {
		return nil, err
	}
	defer t.close()
	return t.run(ctx)
}

func (o *TrainOptions) fill() error {
	r := Recipe()
	if o.Batch == 0 {
		o.Batch = r.Batch
	}
	if o.Accum == 0 {
		o.Accum = r.Accum
	}
	if o.LR == 0 {
		o.LR = r.LR
	}
	if o.Schedule.Kind == "" {
		o.Schedule.Kind = r.Schedule.Kind
		if o.Schedule.DecaySteps == 0 && o.Schedule.DecayFraction == 0 {
			o.Schedule.DecayFraction = r.Schedule.DecayFraction
		}
	}
	if o.MaxGradNorm == 0 {
		o.MaxGradNorm = r.MaxGradNorm
	}
	if o.TrainAll {
		if o.Loss == (LossConfig{}) {
			o.Loss = LossConfig{Gamma: 1, Temperature: 1}
		}
		if o.Loss.Alpha != 0 || o.Loss.Beta != 0 || o.Loss.Gamma == 0 {
			return errTrainAllLoss
		}
	}
	if o.Loss == (LossConfig{}) {
		o.Loss = r.Loss
	}
	if o.Loss.Temperature == 0 {
		o.Loss.Temperature = 1
	}
	if o.Keep == 0 {
		o.Keep = r.Keep
	}
	if err := o.checkParallel(); err != nil {
		return err
	}
	switch {
	case o.Student == "":
		return errors.New("distill: no student checkpoint")
	case o.Data == "":
		return errors.New("distill: no training data")
	case o.Out == "":
		return errors.New("distill: no run directory")
	case o.Batch < 0 || o.Accum < 0:
		return fmt.Errorf("distill: batch %d × accumulation %d: both must be positive", o.Batch, o.Accum)
	case o.Steps < 0 || o.Epochs < 0:
		return fmt.Errorf("distill: steps %d, epochs %d: must not be negative", o.Steps, o.Epochs)
	case o.SaveEvery < 0 || o.Keep < 0:
		return fmt.Errorf("distill: save-every %d, keep %d: must not be negative", o.SaveEvery, o.Keep)
	case !(o.LR > 0) || math.IsInf(o.LR, 0):
		return fmt.Errorf("distill: learning rate %g must be positive", o.LR)
	case o.WarmupFraction < 0 || o.WarmupFraction >= 1:
		return fmt.Errorf("distill: warmup fraction %g must be in [0, 1)", o.WarmupFraction)
	case o.Loss.Alpha < 0 || o.Loss.Beta < 0 || o.Loss.Gamma < 0:
		return fmt.Errorf("distill: loss weights %g, %g, %g must not be negative", o.Loss.Alpha, o.Loss.Beta, o.Loss.Gamma)
	case o.Loss.Alpha == 0 && o.Loss.Beta == 0 && o.Loss.Gamma == 0:
		return errors.New("distill: every loss weight is 0: nothing to train")
	case !(o.Loss.Temperature > 0):
		return fmt.Errorf("distill: temperature %g must be positive", o.Loss.Temperature)
	case o.MaxLength < 0:
		return fmt.Errorf("distill: max length %d must not be negative", o.MaxLength)
	case o.Dropout >= 1 || math.IsNaN(o.Dropout):
		return fmt.Errorf("distill: dropout %g must be below 1", o.Dropout)
	case o.TrainAll && o.Dropout > 0:
		return fmt.Errorf("distill: dropout %g: training every parameter has no dropout", o.Dropout)
	case o.Precision != "" && o.Precision != PrecisionF32 && o.Precision != PrecisionBF16:
		return fmt.Errorf("distill: precision %q: want %s or %s", o.Precision, PrecisionF32, PrecisionBF16)
	case o.Backend != nil && o.Device != "":
		return fmt.Errorf("distill: both a backend (%s) and device %q given", o.Backend.Name(), o.Device)
	case !o.onDevice() && (o.Precision == PrecisionBF16 || o.Recompute):
		return errors.New("distill: bf16 precision and recomputation need a device student (a GPU: --device cuda)")
	case o.onDevice() && o.TrainAll:
		return errors.New("distill: training every parameter runs on the host only (no device)")
	}
	if o.Precision == "" {
		o.Precision = PrecisionF32
	}
	if o.needsTeacher() && o.Teacher == "" {
		return errors.New("distill: the KL and layer terms need a teacher checkpoint")
	}
	return nil
}

func (o *TrainOptions) needsTeacher() bool { return o.Loss.Alpha != 0 || o.Loss.Beta != 0 }

// onDevice reports a run on a DeviceStudent.
func (o *TrainOptions) onDevice() bool {
	d := strings.ToLower(strings.TrimSpace(o.Device))
	return o.Backend != nil || o.parallel() || (d != "" && d != "cpu")
}

func newTrainer(opts TrainOptions) (_ *trainer, err error) {
	if err := opts.fill(); err != nil {
		return nil, err
	}
	switch {
	case opts.Dropout < 0 || opts.TrainAll:
		opts.Dropout = 0
	case opts.Dropout == 0:
		cfg, err := formats.ReadModelConfig(opts.Student)
		if err != nil {
			return nil, fmt.Errorf("distill: student %s: %w", opts.Student, err)
		}
		opts.Dropout = ResidDropout(cfg)
		if err := checkDropout(opts.Dropout); err != nil {
			return nil, fmt.Errorf("distill: student %s: resid_pdrop: %w", opts.Student, err)
		}
	}
	t := &trainer{opts: opts, dir: runDir(opts.Out)}
	defer func() {
		if err != nil {
			t.close()
		}
	}()
	dopts, err := dataset.OptionsFor(opts.Student)
	if err != nil {
		return nil, fmt.Errorf("distill: data options from %s: %w", opts.Student, err)
	}
	if opts.MaxLength > 0 {
		dopts.MaxLength = opts.MaxLength
	}
	dopts.OnBadRecord = opts.OnBadRecord
	if t.data, err = dataset.Open(opts.Data, opts.Images, dopts); err != nil {
		return nil, fmt.Errorf("distill: %w", err)
	}
	if t.data.Len() == 0 {
		return nil, fmt.Errorf("distill: %s holds no usable sample", opts.Data)
	}
	if t.batcher, err = dataset.NewBatcher(t.data.Len(), dataset.BatchPlan{Seed: opts.Seed, MicroBatch: opts.Batch, Accumulation: opts.Accum}); err != nil {
		return nil, fmt.Errorf("distill: %w", err)
	}
	t.steps = opts.Steps
	if t.steps == 0 {
		e := max(opts.Epochs, 1)
		t.steps = e * t.batcher.StepsPerEpoch()
	}
	sc := opts.Schedule
	sc.Peak, sc.TotalSteps = opts.LR, t.steps
	if sc.WarmupSteps == 0 && sc.Kind != "constant" {
		sc.WarmupSteps = int(math.Round(opts.WarmupFraction * float64(t.steps)))
	}
	if t.sched, err = sc.New(); err != nil {
		return nil, fmt.Errorf("distill: schedule: %w", err)
	}
	if opts.parallel() {
		if err := t.loadParallel(); err != nil {
			return nil, err
		}
	} else if opts.onDevice() {
		if err := t.loadDevice(); err != nil {
			return nil, err
		}
	} else if opts.TrainAll {
		if t.full, err = loadFull(opts.Student, Options{Workers: opts.Workers}); err != nil {
			return nil, err
		}
		t.student = t.full.s
	} else if t.student, err = LoadStudent(opts.Student, Options{Workers: opts.Workers, FreezeConnector: opts.FreezeConnector, Dropout: opts.Dropout}); err != nil {
		return nil, err
	}
	if ds := t.rankStudent(); ds != nil {
		t.params = ds.HostParams()
	} else {
		t.params = t.student.Params()
	}
	for _, p := range t.params {
		t.oparams = append(t.oparams, optim.Param{Name: p.Name, Data: p.Data, Grad: p.Grad, Decay: p.Decay})
	}
	if opts.needsTeacher() && t.rankStudent() == nil {
		t.tbe = cpu.New(opts.Workers)
		if t.teacher, err = model.Load(opts.Teacher, t.tbe, model.Options{}); err != nil {
			return nil, fmt.Errorf("distill: teacher: %w", err)
		}
		if err := checkPair(t.teacher, t.student); err != nil {
			return nil, fmt.Errorf("distill: teacher %s and student %s: %w", opts.Teacher, opts.Student, err)
		}
	}
	t.opt = optim.Recipe()
	t.opt.LR, t.opt.Workers = opts.LR, opts.Workers
	// The run directory is made only once everything has loaded.
	if err := t.dir.prepare(opts); err != nil {
		return nil, err
	}
	return t, nil
}

// checkPair refuses a teacher that cannot have produced the student.
func checkPair(m *model.Model, s *Student) error {
	if m.Hybrid != nil {
		return errors.New("the teacher is itself a hybrid (it has mamba_config.json)")
	}
	if m.NumLayers() != s.NumLayers() {
		return fmt.Errorf("%d decoder layers against %d", m.NumLayers(), s.NumLayers())
	}
	if m.ImageTokens() != s.ImageTokens() {
		return fmt.Errorf("%d image rows against %d", m.ImageTokens(), s.ImageTokens())
	}
	tv, sv := m.Config.Text.VocabSize, s.Config.Text.VocabSize
	if tv != sv || m.Config.Text.HiddenSize != s.Config.Text.HiddenSize {
		return fmt.Errorf("hidden %d, vocab %d against hidden %d, vocab %d", m.Config.Text.HiddenSize, tv, s.Config.Text.HiddenSize, sv)
	}
	return nil
}

func (t *trainer) close() {
	if t.log != nil {
		t.log.Close()
		t.log = nil
	}
	if t.dev != nil {
		t.dev.Close()
		t.dev = nil
	}
	if t.par != nil {
		t.par.close()
		t.par = nil
	}
	if t.teacher != nil {
		t.teacher.Close()
		t.teacher = nil
	}
	if t.ownBE != nil {
		t.ownBE.Close()
		t.ownBE = nil
	}
	if t.data != nil {
		t.data.Close()
		t.data = nil
	}
}

func (t *trainer) run(ctx context.Context) (*TrainResult, error) {
	o := &t.opts
	res := &TrainResult{Out: o.Out, StepsTotal: t.steps, Samples: t.data.Len(), Metrics: t.dir.metrics()}
	for _, p := range t.params {
		res.Trainable += int64(p.Len())
	}
	start := 0
	var elapsed0 time.Duration
	if o.Resume {
		st, path, err := t.dir.loadLatest(t.params, t.opt)
		if err != nil {
			return nil, err
		}
		if st != nil {
			start, elapsed0 = st.Step, time.Duration(st.ElapsedNS)
			res.Checkpoint = path
			if err := t.loadHost(); err != nil {
				return nil, fmt.Errorf("distill: resume from %s: %w", path, err)
			}
		}
		if t.log, err = trainlog.Resume(t.dir.metrics(), start); err != nil {
			if !errors.Is(err, os.ErrNotExist) || start != 0 {
				return nil, fmt.Errorf("distill: resume: %w", err)
			}
			t.log, err = trainlog.Create(t.dir.metrics())
			if err != nil {
				return nil, fmt.Errorf("distill: %w", err)
			}
		}
	} else {
		var err error
		if t.log, err = trainlog.Create(t.dir.metrics()); err != nil {
			return nil, fmt.Errorf("distill: %w", err)
		}
	}
	res.ResumedFrom, res.Steps = start, start
	began := time.Now()
	var tokens int64
	saved, logged := start, false
	for step := start; step < t.steps; step++ {
		rec, skipped, ntok, err := t.update(ctx, step)
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			res.Interrupted = true
			break
		}
		if err != nil {
			return res, err
		}
		res.Skipped += skipped
		tokens += int64(ntok)
		res.Steps = step + 1
		// A step whose samples were all bad records updates nothing and
		// logs no line, but counts as done.
		if rec != nil {
			rec.Elapsed = elapsed0 + time.Since(began)
			if err := t.log.Write(*rec); err != nil {
				return res, fmt.Errorf("distill: step %d: %w", step+1, err)
			}
			if !logged {
				res.FirstLoss, logged = rec.Losses.Total, true
			}
			res.Final = lossValues(rec.Losses)
			if o.OnStep != nil {
				o.OnStep(StepReport{Step: step + 1, Steps: t.steps, Record: *rec, Skipped: skipped, ResumedAt: start, TokensInStep: ntok})
			}
		}
		if o.SaveEvery > 0 && (step+1)%o.SaveEvery == 0 && step+1 < t.steps {
			path, err := t.save(step+1, elapsed0+time.Since(began))
			if err != nil {
				return res, err
			}
			res.Checkpoint, saved = path, step+1
		}
	}
	res.Seconds = time.Since(began).Seconds()
	if res.Seconds > 0 {
		res.TokensPerS = float64(tokens) / res.Seconds
	}
	t.describeDevice(res)
	if res.Steps != saved || res.Checkpoint == "" {
		path, err := t.save(res.Steps, elapsed0+time.Since(began))
		if err != nil {
			return res, err
		}
		res.Checkpoint = path
	}
	if err := t.log.Close(); err != nil {
		return res, fmt.Errorf("distill: %w", err)
	}
	t.log = nil
	if res.Interrupted {
		return res, nil
	}
	if res.Steps > 0 {
		res.Plot = filepath.Join(o.Out, "losses.png")
		if err := trainlog.PlotLosses(t.dir.metrics(), res.Plot); err != nil {
			return res, fmt.Errorf("distill: %w", err)
		}
	}
	if !o.NoExport {
		res.Export = filepath.Join(o.Out, "final")
		info := ExportInfo{Version: o.Version, Teacher: o.Teacher, Data: o.Data,
			Steps: res.Steps, Seed: o.Seed, Loss: o.Loss, TrainAll: o.TrainAll, Final: res.Final}
		var err error
		if ds := t.rankStudent(); ds != nil {
			if err = t.syncHost(false); err == nil {
				if err = export(ds.Dir, t.params, res.Export, info); err != nil {
					err = fmt.Errorf("distill: export %s: %w", res.Export, err)
				}
			}
		} else {
			err = Export(t.student, res.Export, info)
		}
		if err != nil {
			return res, err
		}
	}
	return res, nil
}

// update runs optimiser step `step` (from 0). It returns nil for a step
// whose samples were all left out.
func (t *trainer) update(ctx context.Context, step int) (*trainlog.Record, int, int, error) {
	if t.par != nil {
		return t.parallelUpdate(ctx, step)
	}
	o := &t.opts
	plan, err := t.batcher.Step(step)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("distill: %w", err)
	}
	switch {
	case t.dev != nil:
		if err := t.dev.ZeroGrad(); err != nil {
			return nil, 0, 0, err
		}
	case t.full != nil:
		t.full.zeroGrad()
	default:
		t.student.ZeroGrad()
	}
	began := time.Now()
	var sum Losses
	used, skipped, tokens, pos := 0, 0, 0, 0
	for _, micro := range plan.Micro {
		for _, idx := range micro {
			key := DropoutKey{Seed: o.Seed, Step: step, Sample: pos}
			pos++
			if err := ctx.Err(); err != nil {
				return nil, 0, 0, err
			}
			smp, err := t.data.Sample(idx)
			if errors.Is(err, dataset.ErrSkipped) {
				skipped++
				continue
			}
			if err != nil {
				return nil, 0, 0, fmt.Errorf("distill: step %d: %w", step+1, err)
			}
			ls, n, err := t.sample(smp, key)
			if err != nil {
				return nil, 0, 0, fmt.Errorf("distill: step %d: sample %d (record %d %q): %w", step+1, idx, smp.Record, smp.ID, err)
			}
			sum.Total += ls.Total
			sum.KL += ls.KL
			sum.Layer += ls.Layer
			sum.CE += ls.CE
			used++
			tokens += n
		}
	}
	if used == 0 {
		return nil, skipped, 0, nil
	}
	lr := t.sched.LR(step)
	norm, err := t.optimise(used, lr)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("distill: step %d: %w", step+1, err)
	}
	k := float64(used)
	secs := time.Since(began).Seconds()
	rec := &trainlog.Record{
		Step:     step + 1,
		Epoch:    float64(plan.Epoch) + t.epochFraction(step),
		Losses:   trainlog.Losses{KL: sum.KL / k, L2: sum.Layer / k, CE: sum.CE / k, Total: sum.Total / k},
		LR:       lr,
		GradNorm: norm,
	}
	if secs > 0 {
		rec.TokensPerSec = float64(tokens) / secs
	}
	return rec, skipped, tokens, nil
}

// optimise ends an update of used samples: the step's loss is the mean
// over its samples, so the summed gradients are scaled alike; then the
// global norm, clipping and AdamW. It returns the norm before clipping.
func (t *trainer) optimise(used int, lr float64) (float64, error) {
	o := &t.opts
	if t.dev != nil {
		return t.dev.Update(used, lr, o.MaxGradNorm, t.opt)
	}
	inv := float32(1 / float64(used))
	for _, p := range t.params {
		for i := range p.Grad {
			p.Grad[i] *= inv
		}
	}
	var norm float64
	var err error
	if o.MaxGradNorm > 0 {
		norm, err = optim.ClipGlobalNorm(t.oparams, o.MaxGradNorm)
	} else {
		norm, err = optim.GlobalNorm(t.oparams)
	}
	if err != nil {
		return norm, err
	}
	return norm, t.opt.Step(t.oparams, lr)
}

// save writes the checkpoint after step updates (a device student's masters
// and moments downloaded first).
func (t *trainer) save(step int, elapsed time.Duration) (string, error) {
	if err := t.syncHost(true); err != nil {
		return "", err
	}
	return t.dir.save(t.state(step, elapsed), t.params, t.opt, t.opts.Keep)
}

// state is the checkpoint state after step updates.
func (t *trainer) state(step int, elapsed time.Duration) checkpointState {
	return checkpointState{Step: step, ElapsedNS: int64(elapsed), DataSeed: t.opts.Seed, Batch: t.opts.Batch, Accum: t.opts.Accum}
}

// epochFraction is the share of its epoch done after step.
func (t *trainer) epochFraction(step int) float64 {
	spe := t.batcher.StepsPerEpoch()
	return float64(step%spe+1) / float64(spe)
}

// sample runs one sample forward and backward, accumulating gradients,
// with the dropout masks of key. It returns its losses and its sequence
// length.
func (t *trainer) sample(smp dataset.Sample, key DropoutKey) (Losses, int, error) {
	o := &t.opts
	if t.dev != nil {
		in := deviceSample(smp, key, t.dev.Config.ImageTokenIndex, t.dev.ImageTokens(), o.MaskAnswers)
		return t.dev.Accumulate(in, o.Loss)
	}
	s := t.student
	labels := spliceLabels(smp.IDs, smp.Labels, s.Config.ImageTokenIndex, s.ImageTokens())
	if t.full != nil {
		return t.full.sample(smp.IDs, labels, smp.Pixels)
	}
	in := Input{IDs: smp.IDs, Pixels: smp.Pixels, Dropout: &key}
	tg := Targets{Labels: labels}
	if o.MaskAnswers {
		tg.Mask = AnswerMask(labels)
	}
	if t.teacher != nil {
		mamba := s.MambaLayers()
		want := make(map[int]bool, len(mamba))
		for _, l := range mamba {
			want[l] = true
		}
		if o.Loss.Beta != 0 {
			in.LayerInputs = make(map[int][]float32, len(mamba))
			tg.LayerOutputs = make(map[int][]float32, len(mamba))
		}
		logits, err := t.teacher.ForwardHooked(smp.Pixels, smp.IDs, func(l int, x, y kernels.Tensor) error {
			if !want[l] || o.Loss.Beta == 0 {
				return nil
			}
			xi, err := t.tbe.Download(x)
			if err != nil {
				return err
			}
			yo, err := t.tbe.Download(y)
			if err != nil {
				return err
			}
			in.LayerInputs[l], tg.LayerOutputs[l] = xi, yo
			return nil
		})
		if err != nil {
			return Losses{}, 0, fmt.Errorf("teacher: %w", err)
		}
		if o.Loss.Alpha != 0 {
			if tg.Logits, err = t.tbe.Download(logits); err != nil {
				return Losses{}, 0, fmt.Errorf("teacher logits: %w", err)
			}
		}
	}
	pass, err := s.Forward(in, true)
	if err != nil {
		return Losses{}, 0, err
	}
	if len(labels) != pass.Len {
		return Losses{}, 0, fmt.Errorf("labels cover %d rows, the sequence %d", len(labels), pass.Len)
	}
	ls, dlogits, dlayers, err := Objective(o.Loss, pass, tg)
	if err != nil {
		return Losses{}, 0, err
	}
	if err := s.Backward(pass, dlogits, dlayers); err != nil {
		return Losses{}, 0, err
	}
	return ls, pass.Len, nil
}

// spliceLabels lays labels given per id over the spliced sequence: each
// image placeholder becomes rows image rows of IgnoreLabel.
func spliceLabels(ids, labels []int, placeholder, rows int) []int {
	out := make([]int, 0, len(ids)+rows)
	for i, id := range ids {
		if id == placeholder {
			for range rows {
				out = append(out, IgnoreLabel)
			}
			continue
		}
		out = append(out, labels[i])
	}
	return out
}
