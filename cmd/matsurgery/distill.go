package main

import (
	"fmt"
	"strings"

	"github.com/schollz/progressbar/v3"

	"github.com/matsurgery/matsurgery/backends"
	"github.com/matsurgery/matsurgery/dataset"
	"github.com/matsurgery/matsurgery/distill"
	"github.com/matsurgery/matsurgery/optim"
)

// DistillCmd is `matsurgery distill`.
type DistillCmd struct {
	Teacher string `help:"Teacher checkpoint (the model the student was converted from); not needed for a cross-entropy-only run." type:"existingdir"`
	Student string `help:"Hybrid checkpoint to train (convert's output); with --trainable all, any TinyLLaVA checkpoint." required:"" type:"existingdir"`
	Data    string `help:"Training data: a LLaVA-format JSON array or JSON Lines file." required:"" type:"existingfile"`
	Images  string `help:"Directory the data's image paths are relative to (default: the data file's)." type:"existingdir"`
	Out     string `help:"Run directory: checkpoints, metrics.jsonl, losses.png and the distilled hybrid in final/." required:""`

	Steps  int `help:"Optimiser updates (default: --epochs passes over the data)."`
	Epochs int `help:"Passes over the data." default:"1"`
	Batch  int `help:"Samples per micro-batch." default:"1"`
	Accum  int `help:"Micro-batches per update (gradient accumulation); an update averages batch×accum samples." default:"64"`

	LR          float64 `help:"Peak learning rate." default:"2e-4" name:"lr"`
	Schedule    string  `help:"Learning-rate schedule: wsd (warmup–stable–decay), cosine, warmup, constant." default:"wsd" enum:"wsd,cosine,warmup,constant"`
	Warmup      float64 `help:"Warmup, as a fraction of the updates (below 1) or a number of updates." default:"0.1"`
	Decay       float64 `help:"wsd: decay phase, as a fraction of the updates (below 1) or a number of updates." default:"0.1"`
	MinLR       float64 `help:"Learning rate at the end of the decay (wsd, cosine)." default:"0" name:"min-lr"`
	MaxGradNorm float64 `help:"Clip the global gradient norm to this (0: no clipping)." default:"0.1"`

	Alpha       float64 `help:"Weight of KL(teacher‖student) on the logits." default:"1"`
	Beta        float64 `help:"Weight of the layer term Σ‖S_l(x)−T_l(x)‖ on the teacher's layer inputs." default:"1"`
	Gamma       float64 `help:"Weight of the cross-entropy on the answer tokens." default:"0"`
	Temperature float64 `help:"Temperature of the KL term." default:"1"`
	Distance    string  `help:"Layer distance: l2 (the reference's un-squared norm), squared, mse." default:"l2" enum:"l2,squared,mse"`
	MaskAnswers bool    `help:"Count only the rows that predict answer tokens in the KL term (the reference counts every row)."`

	Dropout *float64 `help:"Residual dropout probability in the student's training forward, on each layer's mixer/attention and MLP outputs (default: the student config's resid_pdrop for phi, none for llama and qwen2; 0: none). Not with --trainable all." placeholder:"P"`

	Trainable      string `help:"What trains: mamba (the Mamba-2 mixers, with the connector unless --no-train-connector), or all (every parameter but the vision tower's, on the cross-entropy alone, no teacher: to train or fine-tune a plain checkpoint given as --student)." default:"mamba" enum:"mamba,all"`
	TrainConnector bool   `help:"Train the mlp2x_gelu connector too." default:"true" negatable:""`

	Seed        uint64 `help:"Seed of the data order." default:"0"`
	SaveEvery   int    `help:"Checkpoint every so many updates (0: at the end and on Ctrl-C only)." default:"500"`
	Keep        int    `help:"Checkpoints kept (the latest)." default:"2"`
	Resume      bool   `help:"Continue the run in --out from its latest checkpoint (bit for bit)."`
	MaxLength   int    `help:"Cut samples to this many tokens (default: the checkpoint's tokenizer_model_max_length)."`
	OnBadRecord string `help:"A bad data record: skip it (counted) or stop." default:"skip" enum:"skip,stop"`
	Workers     int    `help:"Goroutines per operation (0: every core)." default:"0"`
	NoExport    bool   `help:"Do not write the distilled hybrid (final/)."`

	Device    string `help:"Compute device: auto (the GPU when there is one, else the CPU trainer), cpu, cuda, cuda:N. On a GPU the whole update runs there, the teacher too." default:"auto"`
	Precision string `help:"Matrix products on a GPU: bf16 (bf16 operands with f32 accumulation and f32 master weights, the reference's autocast; the default there) or f32. The CPU trainer computes in f32." enum:",bf16,f32" default:""`
	Recompute bool   `help:"On a GPU, keep only each layer's input and recompute the layer in backward (less memory, same results)."`
	GPUs      int    `help:"Data-parallel training on the first N GPUs of this host (CUDA_VISIBLE_DEVICES picks which) through NCCL: libnccl.so.2 from the libnccl2 package or PyTorch's nvidia-nccl wheel, or the file $MATSURGERY_NCCL_LIB names. Each update's batch×accum samples are shared out and the gradients summed: results equal one GPU with the same global batch, and a run resumes on any number of GPUs. 0 or 1: one device." name:"gpus" default:"0" placeholder:"N"`
}

func (c *DistillCmd) Run(g *Globals) error {
	if c.Trainable == "all" && (c.Alpha != 1 || c.Beta != 1 || c.Gamma != 0) && (c.Alpha != 0 || c.Beta != 0) {
		return fmt.Errorf("--trainable all trains on the cross-entropy only: leave --alpha, --beta and --gamma at their defaults or set --alpha 0 --beta 0")
	}
	policy, err := dataset.ParsePolicy(c.OnBadRecord)
	if err != nil {
		return fmt.Errorf("--on-bad-record: %w", err)
	}
	dist := map[string]distill.LayerDistance{"l2": distill.L2Norm, "squared": distill.SquaredL2, "mse": distill.MeanSquared}[c.Distance]
	o := distill.TrainOptions{
		Teacher: c.Teacher, Student: c.Student, Data: c.Data, Images: c.Images, Out: c.Out,
		Steps: c.Steps, Epochs: c.Epochs, Batch: c.Batch, Accum: c.Accum, LR: c.LR,
		Schedule:    optim.ScheduleConfig{Kind: c.Schedule, Min: c.MinLR},
		MaxGradNorm: c.MaxGradNorm,
		Loss:        distill.LossConfig{Alpha: c.Alpha, Beta: c.Beta, Gamma: c.Gamma, Temperature: c.Temperature, Distance: dist},
		MaskAnswers: c.MaskAnswers, FreezeConnector: !c.TrainConnector,
		Seed: c.Seed, SaveEvery: c.SaveEvery, Keep: c.Keep, Resume: c.Resume, MaxLength: c.MaxLength,
		OnBadRecord: policy, Workers: c.Workers, NoExport: c.NoExport, Version: toolVersion(),
	}
	if c.MaxGradNorm == 0 {
		o.MaxGradNorm = -1
	}
	if c.Dropout != nil {
		switch p := *c.Dropout; {
		case !(p >= 0 && p < 1):
			return fmt.Errorf("--dropout %g: must be in [0, 1)", p)
		case p == 0:
			o.Dropout = -1
		default:
			o.Dropout = p
		}
	}
	if c.Steps > 0 {
		o.Epochs = 0
	}
	switch {
	case c.Warmup < 0 || c.Decay < 0:
		return fmt.Errorf("--warmup %g, --decay %g: must not be negative", c.Warmup, c.Decay)
	case c.Warmup < 1:
		o.WarmupFraction = c.Warmup
	default:
		o.Schedule.WarmupSteps = int(c.Warmup)
	}
	if c.Decay < 1 {
		o.Schedule.DecayFraction = c.Decay
	} else {
		o.Schedule.DecaySteps = int(c.Decay)
	}
	if c.Schedule != "wsd" {
		o.Schedule.DecayFraction, o.Schedule.DecaySteps = 0, 0
	}
	if c.Trainable == "all" {
		o.TrainAll, o.Loss = true, distill.LossConfig{Gamma: max(c.Gamma, 1), Temperature: 1}
		if c.Gamma > 0 {
			o.Loss.Gamma = c.Gamma
		}
	}
	if o.Loss.Alpha == 0 && o.Loss.Beta == 0 && c.Teacher != "" {
		o.Teacher = "" // cross-entropy only: the teacher is not run
	}
	if err := c.pickDevice(g, &o); err != nil {
		return err
	}
	if o.Backend != nil {
		defer o.Backend.Close()
	}
	bar := g.stepBar()
	o.OnStep = bar.step
	res, err := distill.Train(g.ctx, o)
	bar.finish()
	if err != nil {
		return err
	}
	if g.JSON {
		if err := g.printJSON(res); err != nil {
			return err
		}
	} else {
		if res.ResumedFrom > 0 {
			g.say("resumed at step %d from %s\n", res.ResumedFrom, res.Checkpoint)
		}
		if res.Steps > res.ResumedFrom {
			g.say("trained %d of %d steps in %.1fs (%.0f tokens/s): loss %.5g → %.5g (KL %.4g, layer %.4g, CE %.4g)\n",
				res.Steps, res.StepsTotal, res.Seconds, res.TokensPerS, res.FirstLoss, res.Final.Total, res.Final.KL, res.Final.L2, res.Final.CE)
		}
		if res.Ranks > 1 {
			g.say("data-parallel on %s, peak memory %.2f GiB a rank\n", res.Device, float64(res.PeakDeviceMemory)/(1<<30))
		}
		if res.Skipped > 0 {
			g.say("skipped %d bad samples\n", res.Skipped)
		}
		g.say("checkpoint %s\n", res.Checkpoint)
		if res.Plot != "" {
			g.say("metrics %s, curves %s\n", res.Metrics, res.Plot)
		}
		if res.Export != "" {
			g.say("wrote %s\n", res.Export)
		}
	}
	if res.Interrupted {
		fmt.Fprintf(g.stderr, "interrupted at step %d: continue with --resume\n", res.Steps)
		return exitError{130}
	}
	return nil
}

// pickDevice sets the run's device: the host trainer for cpu, a device
// student for cuda, and for auto the GPU when one opens (the host trainer
// otherwise, and for --trainable all, which trains on the host only).
func (c *DistillCmd) pickDevice(g *Globals, o *distill.TrainOptions) error {
	dev := strings.ToLower(strings.TrimSpace(c.Device))
	switch {
	case c.GPUs < 0:
		return fmt.Errorf("--gpus %d: must not be negative", c.GPUs)
	case c.GPUs >= 2 && o.TrainAll:
		return fmt.Errorf("--gpus %d: --trainable all runs on the CPU trainer only", c.GPUs)
	case c.GPUs >= 2 && dev == "cpu":
		return fmt.Errorf("--gpus %d trains on GPUs: not with --device cpu", c.GPUs)
	case c.GPUs >= 2 && dev != "auto" && dev != "cuda":
		return fmt.Errorf("--gpus %d takes the first %d GPUs of this host: leave --device at auto or cuda (CUDA_VISIBLE_DEVICES picks which GPUs)", c.GPUs, c.GPUs)
	case c.GPUs >= 2:
		o.GPUs = c.GPUs
	case dev == "cpu":
		if c.Precision == "bf16" || c.Recompute {
			return fmt.Errorf("--precision bf16 and --recompute need a GPU (--device cuda); the CPU trainer computes in f32")
		}
		return nil
	case dev == "auto":
		if o.TrainAll {
			return nil
		}
		be, note, err := backends.Open("auto")
		if err != nil {
			return err
		}
		if !strings.HasPrefix(be.Name(), "cuda") {
			be.Close()
			if c.Precision == "bf16" || c.Recompute {
				return fmt.Errorf("--precision bf16 and --recompute need a GPU, and none is usable (%s)", note)
			}
			if note != "" && !g.Quiet {
				fmt.Fprintln(g.stderr, "note:", note)
			}
			return nil
		}
		o.Backend = be
	default:
		if o.TrainAll {
			return fmt.Errorf("--trainable all runs on the CPU trainer only: leave --device at auto or cpu")
		}
		o.Device = c.Device
	}
	o.Precision, o.Recompute = c.Precision, c.Recompute
	if o.Precision == "" {
		o.Precision = distill.PrecisionBF16
	}
	return nil
}

// stepBar is a progress bar of training updates on a terminal's stderr,
// showing the loss and the tokens/s; silent elsewhere.
type stepBar struct {
	g *Globals
	p *progressbar.ProgressBar
}

func (g *Globals) stepBar() *stepBar { return &stepBar{g: g} }

func (b *stepBar) step(r distill.StepReport) {
	if b.g.Quiet || b.g.JSON || !isTerminal(b.g.stderr) {
		return
	}
	if b.p == nil {
		b.p = progressbar.NewOptions(r.Steps,
			progressbar.OptionSetWriter(b.g.stderr),
			progressbar.OptionSetWidth(25),
			progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(100_000_000),
			progressbar.OptionClearOnFinish(),
		)
		b.p.Set(r.ResumedAt)
	}
	var terms []string
	if l := r.Record.Losses; l.KL != 0 || l.L2 != 0 {
		terms = append(terms, fmt.Sprintf("kl %.3g l2 %.3g", l.KL, l.L2))
	}
	if r.Record.Losses.CE != 0 {
		terms = append(terms, fmt.Sprintf("ce %.3g", r.Record.Losses.CE))
	}
	b.p.Describe(fmt.Sprintf("loss %.4g (%s) %.0f tok/s", r.Record.Losses.Total, strings.Join(terms, " "), r.Record.TokensPerSec))
	b.p.Set(r.Step)
}

func (b *stepBar) finish() {
	if b.p != nil {
		b.p.Finish()
		b.p = nil
	}
}
