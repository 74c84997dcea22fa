package main

import (
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/matsurgery/matsurgery/dataset"
	"github.com/matsurgery/matsurgery/distill"
	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/initmap"
	"github.com/matsurgery/matsurgery/kernels/cpu"
	"github.com/matsurgery/matsurgery/optim"
	"github.com/matsurgery/matsurgery/surgery"
	"github.com/matsurgery/matsurgery/verify"
)

// demoTeacher is the tiny phi-family TinyLLaVA teacher the demo converts.
//
//go:embed demodata/teacher
var demoTeacher embed.FS

// DemoCmd is `matsurgery demo`.
type DemoCmd struct {
	Out     string `help:"Keep everything in this directory (default: a temporary directory, removed at the end)."`
	Steps   int    `help:"Distillation updates." default:"30"`
	Samples int    `help:"Coloured-shapes training samples to write." default:"32"`
	Seed    uint64 `help:"Seed of the data, the conversion and the data order." default:"1"`
	Workers int    `help:"Goroutines per operation (0: every core)." default:"0"`

	OnlyData int `help:"Write this many coloured-shapes samples (data.json and images/) into --out and stop." hidden:""`
}

// demoStage is one line of the demo's report.
type demoStage struct {
	Stage   string  `json:"stage"`
	Seconds float64 `json:"seconds"`
	Result  string  `json:"result"`
}

func (c *DemoCmd) Run(g *Globals) error {
	if c.OnlyData > 0 {
		if c.Out == "" {
			return fmt.Errorf("--only-data needs --out")
		}
		return dataset.WriteShapes(c.Out, c.OnlyData, c.Seed, 56)
	}
	if c.Steps <= 0 || c.Samples <= 0 {
		return fmt.Errorf("--steps %d and --samples %d must be positive", c.Steps, c.Samples)
	}
	dir := c.Out
	if dir == "" {
		tmp, err := os.MkdirTemp("", "matsurgery-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	} else if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return fmt.Errorf("%s is not empty: give the demo a new directory", dir)
	}
	var stages []demoStage
	stage := func(name string, f func() (string, error)) error {
		start := time.Now()
		res, err := f()
		if err != nil {
			return fmt.Errorf("demo: %s: %w", name, err)
		}
		st := demoStage{Stage: name, Seconds: time.Since(start).Seconds(), Result: res}
		stages = append(stages, st)
		g.say("%-9s %5.1fs  %s\n", name, st.Seconds, res)
		return nil
	}
	teacher := filepath.Join(dir, "teacher")
	hybrid := filepath.Join(dir, "hybrid")
	train := filepath.Join(dir, "shapes-train")
	test := filepath.Join(dir, "shapes-test")
	run := filepath.Join(dir, "run")
	if err := stage("unpack", func() (string, error) {
		if err := unpackDemoTeacher(teacher); err != nil {
			return "", err
		}
		cfg, err := formats.ReadModelConfig(teacher)
		if err != nil {
			return "", err
		}
		if err := dataset.WriteShapes(train, c.Samples, c.Seed, cfg.Vision.ImageSize); err != nil {
			return "", err
		}
		if err := dataset.WriteShapes(test, 8, c.Seed+1000, cfg.Vision.ImageSize); err != nil {
			return "", err
		}
		return fmt.Sprintf("tiny %s teacher (%d layers, hidden %d), %d coloured-shapes samples", cfg.Family,
			cfg.Text.NumLayers, cfg.Text.HiddenSize, c.Samples), nil
	}); err != nil {
		return err
	}
	if err := stage("convert", func() (string, error) {
		job, err := surgery.Prepare(surgery.Options{Teacher: teacher, Out: hybrid, Ratio: 0.25, Seed: c.Seed, Init: initmap.Defaults(), Version: toolVersion()})
		if err != nil {
			return "", err
		}
		defer job.Teacher.Close()
		res, err := job.Run(g.ctx)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("25%%: Mamba-2 layers %s, attention layers %s", joinInts(res.MambaLayers), joinInts(res.AttnLayers)), nil
	}); err != nil {
		return err
	}
	if err := stage("verify", func() (string, error) {
		rep, err := verify.Run(g.ctx, verify.Options{Hybrid: hybrid, Teacher: teacher, Backend: cpu.New(c.Workers), Seed: c.Seed})
		if err != nil {
			return "", err
		}
		if !rep.Pass {
			return "", fmt.Errorf("FAIL: %s", rep.FirstFailure())
		}
		return fmt.Sprintf("PASS: linear-attention identity, chunked = sequential scan, %d tensors checked", rep.Tensors), nil
	}); err != nil {
		return err
	}
	var tres *distill.TrainResult
	if err := stage("distill", func() (string, error) {
		var err error
		tres, err = distill.Train(g.ctx, distill.TrainOptions{Teacher: teacher, Student: hybrid, Data: filepath.Join(train, "data.json"),
			Out: run, Steps: c.Steps, Batch: 1, Accum: 2, LR: 2e-3, Schedule: optim.ScheduleConfig{Kind: "wsd", DecayFraction: 0.2},
			WarmupFraction: 0.1, Seed: c.Seed, Workers: c.Workers, Version: toolVersion()})
		if err != nil {
			return "", err
		}
		if tres.Interrupted {
			return "", fmt.Errorf("interrupted")
		}
		return fmt.Sprintf("%d steps, loss %.4g → %.4g, %.0f tokens/s", tres.Steps, tres.FirstLoss, tres.Final.Total, tres.TokensPerS), nil
	}); err != nil {
		return err
	}
	var answers [2]*distill.EvalResult
	if err := stage("generate", func() (string, error) {
		data := filepath.Join(test, "data.json")
		var err error
		if answers[0], err = distill.EvaluateAnswers(g.ctx, teacher, data, 4, 6, c.Workers); err != nil {
			return "", err
		}
		if answers[1], err = distill.EvaluateAnswers(g.ctx, tres.Export, data, 4, 6, c.Workers); err != nil {
			return "", err
		}
		return fmt.Sprintf("teacher %d/4, distilled hybrid %d/4 first-word matches", answers[0].Correct, answers[1].Correct), nil
	}); err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(struct {
			Dir     string                 `json:"dir,omitempty"`
			Stages  []demoStage            `json:"stages"`
			Answers [2]*distill.EvalResult `json:"answers"`
		}{c.Out, stages, answers})
	}
	if !g.Quiet {
		fmt.Fprintln(g.stdout)
		for i := range answers[1].Answers {
			fmt.Fprintf(g.stdout, "reference %-9q teacher %-14q hybrid %q\n", answers[1].References[i], answers[0].Answers[i], answers[1].Answers[i])
		}
	}
	if c.Out != "" {
		g.say("everything is in %s (hybrid: %s)\n", c.Out, tres.Export)
	}
	return nil
}

// unpackDemoTeacher writes the embedded teacher into dir.
func unpackDemoTeacher(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return fs.WalkDir(demoTeacher, "demodata/teacher", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := demoTeacher.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, filepath.Base(path)), b, 0o644)
	})
}
