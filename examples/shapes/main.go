// Command shapes shows that MaTVLM's method works, end to end and in small,
// on a 2-core CPU in a few minutes: it trains a tiny phi-family TinyLLaVA
// teacher on a synthetic coloured-shapes VQA task (matsurgery training every
// parameter on the cross-entropy), converts it into hybrids with 25% and 50%
// Mamba-2 layers initialised from attention, distils them (KL + layer L2, the
// reference recipe's loss), and scores every model by greedy generation
// (first word against the reference). Two ablations in small: attention-
// initialised against randomly initialised mixers, and KL+L2 against
// KL+L2+CE. It prints a Markdown table (README.md holds one run's).
//
//	go run ./examples/shapes                 # from the repository root
//	go run ./examples/shapes -dir /tmp/shapes -keep
package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"github.com/matsurgery/matsurgery/dataset"
	"github.com/matsurgery/matsurgery/distill"
	"github.com/matsurgery/matsurgery/initmap"
	"github.com/matsurgery/matsurgery/optim"
	"github.com/matsurgery/matsurgery/surgery"
	"github.com/matsurgery/matsurgery/trainlog"
)

type config struct {
	dir, base, teacher      string
	keep                    bool
	train, test             int
	teacherSteps, teachAcc  int
	distillSteps, distilAcc int
	teachLR, distillLR      float64
	seed                    uint64
	workers                 int
	device, precision       string
}

func main() {
	var c config
	flag.StringVar(&c.dir, "dir", "", "working directory (default: a temporary one)")
	flag.BoolVar(&c.keep, "keep", false, "keep the working directory")
	flag.StringVar(&c.base, "base", "testdata/fixtures/phi-tiny", "checkpoint whose shapes and tokenizer the teacher starts from (its weights are retrained)")
	flag.StringVar(&c.teacher, "teacher", "", "use this trained teacher instead of training one")
	flag.IntVar(&c.train, "train", 600, "training samples")
	flag.IntVar(&c.test, "test", 200, "test samples")
	flag.IntVar(&c.teacherSteps, "teacher-steps", 240, "teacher updates")
	flag.IntVar(&c.teachAcc, "teacher-accum", 8, "teacher samples per update")
	flag.Float64Var(&c.teachLR, "teacher-lr", 3e-3, "teacher peak learning rate")
	flag.IntVar(&c.distillSteps, "distill-steps", 120, "distillation updates")
	flag.IntVar(&c.distilAcc, "distill-accum", 2, "distillation samples per update")
	flag.Float64Var(&c.distillLR, "distill-lr", 2e-3, "distillation peak learning rate")
	flag.Uint64Var(&c.seed, "seed", 1, "seed of the data, conversions and data order")
	flag.IntVar(&c.workers, "workers", 0, "goroutines per operation (0: every core)")
	flag.StringVar(&c.device, "device", "", "distil on this device (cuda, cuda:N; default: the CPU trainer); the teacher trains on the CPU")
	flag.StringVar(&c.precision, "precision", "", "a device distillation's matrix products: f32 (default) or bf16")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "shapes:", err)
		os.Exit(1)
	}
}

// row is one line of the results table.
type row struct {
	model, init, loss string
	acc               *distill.EvalResult
	first, last       float64 // distillation loss (total), NaN when not trained
	tokS              float64
}

func run(ctx context.Context, c config) error {
	began := time.Now()
	dir := c.dir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "matsurgery-shapes-")
		if err != nil {
			return err
		}
		dir = tmp
	}
	if !c.keep {
		defer os.RemoveAll(dir)
	}
	say := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "[%5.1fs] %s\n", time.Since(began).Seconds(), fmt.Sprintf(format, args...))
	}
	trainDir, testDir := filepath.Join(dir, "train"), filepath.Join(dir, "test")
	if err := dataset.WriteShapes(trainDir, c.train, c.seed, 56); err != nil {
		return err
	}
	if err := dataset.WriteShapes(testDir, c.test, c.seed+1000, 56); err != nil {
		return err
	}
	trainData, testData := filepath.Join(trainDir, "data.json"), filepath.Join(testDir, "data.json")
	eval := func(ck string) (*distill.EvalResult, error) {
		return distill.EvaluateAnswers(ctx, ck, testData, 0, 10, c.workers)
	}
	var rows []row

	// 1. The teacher: every parameter but the vision tower's, cross-entropy.
	teacher := c.teacher
	trow := row{model: "teacher (8 attention layers)", init: "-", loss: "given (-teacher)", first: math.NaN(), last: math.NaN()}
	if teacher == "" {
		say("training the teacher (%d updates × %d samples)", c.teacherSteps, c.teachAcc)
		tres, err := distill.Train(ctx, distill.TrainOptions{Student: c.base, Data: trainData, Out: filepath.Join(dir, "teacher-run"),
			TrainAll: true, Steps: c.teacherSteps, Batch: 1, Accum: c.teachAcc, LR: c.teachLR,
			Schedule: optim.ScheduleConfig{Kind: "wsd", DecayFraction: 0.3}, WarmupFraction: 0.05, MaxGradNorm: 1,
			Seed: c.seed, Workers: c.workers})
		if err != nil {
			return err
		}
		teacher = tres.Export
		say("teacher: CE %.3g → %.3g, %.0f tokens/s (training every parameter)", tres.FirstLoss, tres.Final.CE, tres.TokensPerS)
		trow.loss, trow.first, trow.last, trow.tokS = "CE (every parameter)", tres.FirstLoss, tres.Final.Total, tres.TokensPerS
	}
	tacc, err := eval(teacher)
	if err != nil {
		return err
	}
	say("teacher: accuracy %.1f%%", 100*tacc.Accuracy)
	trow.acc = tacc
	rows = append(rows, trow)

	convert := func(name string, ratio float64) (string, error) {
		out := filepath.Join(dir, name)
		job, err := surgery.Prepare(surgery.Options{Teacher: teacher, Out: out, Ratio: ratio, Seed: c.seed, Init: initmap.Defaults(), Version: "example"})
		if err != nil {
			return "", err
		}
		defer job.Teacher.Close()
		_, err = job.Run(ctx)
		return out, err
	}
	distil := func(student, name string, loss distill.LossConfig) (*distill.TrainResult, error) {
		return distill.Train(ctx, distill.TrainOptions{Teacher: teacher, Student: student, Data: trainData, Out: filepath.Join(dir, name),
			Steps: c.distillSteps, Batch: 1, Accum: c.distilAcc, LR: c.distillLR,
			Schedule: optim.ScheduleConfig{Kind: "wsd", DecayFraction: 0.2}, WarmupFraction: 0.1, Loss: loss,
			Seed: c.seed, Workers: c.workers, Device: c.device, Precision: c.precision})
	}
	klL2 := distill.DefaultLoss()
	klL2CE := klL2
	klL2CE.Gamma = 1

	type variant struct {
		name, model, init, loss string
		ratio                   float64
		random                  bool
		cfg                     distill.LossConfig
	}
	for _, v := range []variant{
		{"h25", "hybrid 25% (layers 0,4)", "attention", "KL + L2", 0.25, false, klL2},
		{"h50", "hybrid 50% (layers 0,2,4,6)", "attention", "KL + L2", 0.5, false, klL2},
		{"h25-random", "hybrid 25% (layers 0,4)", "random", "KL + L2", 0.25, true, klL2},
		{"h25-ce", "hybrid 25% (layers 0,4)", "attention", "KL + L2 + CE", 0.25, false, klL2CE},
	} {
		student, err := convert(v.name, v.ratio)
		if err != nil {
			return err
		}
		if v.random {
			if student, err = randomiseMixers(student, filepath.Join(dir, v.name+"-randomised"), c.seed); err != nil {
				return err
			}
		}
		if v.name == "h25" || v.name == "h50" || v.random {
			acc, err := eval(student)
			if err != nil {
				return err
			}
			say("%s, %s init, before distillation: accuracy %.1f%%", v.model, v.init, 100*acc.Accuracy)
			rows = append(rows, row{model: v.model, init: v.init, loss: "none (just converted)", acc: acc, first: math.NaN(), last: math.NaN()})
		}
		say("distilling %s (%s init, %s): %d updates × %d samples", v.model, v.init, v.loss, c.distillSteps, c.distilAcc)
		res, err := distil(student, v.name+"-run", v.cfg)
		if err != nil {
			return err
		}
		acc, err := eval(res.Export)
		if err != nil {
			return err
		}
		recs, err := trainlog.Read(res.Metrics)
		if err != nil {
			return err
		}
		last := meanLast(recs, 5)
		say("%s distilled: loss %.4g → %.4g (KL %.3g, L2 %.3g), accuracy %.1f%%, %.0f tokens/s", v.model, res.FirstLoss, last, res.Final.KL, res.Final.L2, 100*acc.Accuracy, res.TokensPerS)
		first := recs[0].Losses.KL + recs[0].Losses.L2
		rows = append(rows, row{model: v.model, init: v.init, loss: v.loss, acc: acc, first: first, last: last, tokS: res.TokensPerS})
	}
	printTable(os.Stdout, c, rows, tacc.Accuracy, time.Since(began))
	return nil
}

// meanLast is the mean KL + L2 of the last k updates (the CE term left
// out, so that runs with and without it compare).
func meanLast(recs []trainlog.Record, k int) float64 {
	k = min(k, len(recs))
	s := 0.0
	for _, r := range recs[len(recs)-k:] {
		s += r.Losses.KL + r.Losses.L2
	}
	return s / float64(k)
}

// randomiseMixers writes a copy of the hybrid whose mixers' x, B, C rows
// of in_proj and out_proj are drawn afresh, U(±1/√fan_in) as the z and dt
// rows are (PyTorch's Linear init), instead of coming from v, k, q and o.
func randomiseMixers(hybrid, out string, seed uint64) (string, error) {
	st, err := distill.LoadStudent(hybrid, distill.Options{})
	if err != nil {
		return "", err
	}
	h := st.Hybrid
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	uniform := func(v []float32, bound float64) {
		for i := range v {
			v[i] = float32((2*rng.Float64() - 1) * bound)
		}
	}
	for _, p := range st.Params() {
		switch {
		case strings.HasSuffix(p.Name, "mamba.in_proj.weight"):
			d := p.Shape[1]
			r0, r1 := h.DInner, h.DInner+2*h.DXB+h.DInner // x | B | C
			uniform(p.Data[r0*d:r1*d], 1/math.Sqrt(float64(d)))
		case strings.HasSuffix(p.Name, "mamba.out_proj.weight"):
			uniform(p.Data, 1/math.Sqrt(float64(p.Shape[1])))
		}
	}
	return out, distill.Export(st, out, distill.ExportInfo{Version: "example: x/B/C/out_proj re-randomised"})
}

func printTable(w *os.File, c config, rows []row, teacherAcc float64, took time.Duration) {
	fmt.Fprintf(w, "\n| model | mixer init | distillation loss | accuracy | of teacher | loss first → last 5 (KL+L2; teacher: CE) | train tokens/s |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		loss := "-"
		if !math.IsNaN(r.first) {
			loss = fmt.Sprintf("%.3g → %.3g", r.first, r.last)
		}
		tok := "-"
		if r.tokS > 0 {
			tok = fmt.Sprintf("%.0f", r.tokS)
		}
		of := "-"
		if teacherAcc > 0 {
			of = fmt.Sprintf("%.0f%%", 100*r.acc.Accuracy/teacherAcc)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %d/%d = %.1f%% | %s | %s | %s |\n", r.model, r.init, r.loss, r.acc.Correct, r.acc.Samples,
			100*r.acc.Accuracy, of, loss, tok)
	}
	fmt.Fprintf(w, "\n%d training and %d test samples; teacher %d updates × %d samples, each distillation %d updates × %d samples; seed %d; %s in all.\n",
		c.train, c.test, c.teacherSteps, c.teachAcc, c.distillSteps, c.distilAcc, c.seed, took.Round(time.Second))
}
