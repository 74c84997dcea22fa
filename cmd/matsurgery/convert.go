package main

import (
	"fmt"
	"time"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/initmap"
	"github.com/matsurgery/matsurgery/layout"
	"github.com/matsurgery/matsurgery/outdir"
	"github.com/matsurgery/matsurgery/surgery"
)

// ConvertCmd is `matsurgery convert`.
type ConvertCmd struct {
	Teacher string `arg:"" help:"Teacher checkpoint directory (TinyLLaVA_Factory layout)." type:"existingdir"`
	Out     string `arg:"" help:"Output directory for the hybrid checkpoint."`

	Ratio  float64 `help:"Fraction of decoder layers to turn into Mamba-2 layers, spread at equal intervals (0.25 of 32 → 0,4,…,28)." xor:"plan"`
	Layers string  `help:"Explicit Mamba layers, e.g. 0,4,8 or 0-3." xor:"plan"`
	Preset string  `help:"The reference code's hand-written lists for 32-layer models: matvlm-12.5, matvlm-25, matvlm-50." xor:"plan"`

	Seed      uint64  `help:"Seed of the random parts (same inputs and seed → byte-identical output)." default:"0"`
	DType     string  `help:"Dtype of the new tensors: BF16, F16, F32 (default: the teacher's)." name:"dtype"`
	ShardSize string  `help:"Maximum shard size, e.g. 5GB, 500MB (default: shard like the teacher)."`
	KeepBias  bool    `help:"Carry q/k/v/o biases into in_proj/out_proj biases (the reference drops them)."`
	DtMin     float64 `help:"Smallest initial Δt." default:"0.001"`
	DtMax     float64 `help:"Largest initial Δt." default:"0.1"`
	DtFloor   float64 `help:"Floor of the initial Δt." default:"0.0001"`
	AMin      float64 `help:"A_log = log U(a-min, a-max)." default:"1" name:"a-min"`
	AMax      float64 `help:"A_log = log U(a-min, a-max)." default:"16" name:"a-max"`
	ConvInit  float64 `help:"Conv weight and bias drawn U(±conv-init) (PyTorch's default for kernel 4)." default:"0.5"`
	DryRun    bool    `help:"Print the plan and write nothing."`
	Force     bool    `help:"Replace a non-empty output directory."`
}

func (c *ConvertCmd) Run(g *Globals) error {
	opts := surgery.Options{
		Teacher: c.Teacher, Out: c.Out, Ratio: c.Ratio, Preset: c.Preset, Seed: c.Seed, Force: c.Force,
		Version: toolVersion(),
		Init: initmap.Options{DtMin: c.DtMin, DtMax: c.DtMax, DtFloor: c.DtFloor, AMin: c.AMin, AMax: c.AMax,
			ConvBound: c.ConvInit, KeepBias: c.KeepBias, DType: formats.DType(upper(c.DType)), ConvKernel: 4},
		Progress: g.progress(),
	}
	if c.Layers != "" {
		l, err := layout.ParseLayers(c.Layers)
		if err != nil {
			return fmt.Errorf("--layers: %w", err)
		}
		opts.Layers = l
	}
	if c.ShardSize != "" {
		n, err := parseBytes(c.ShardSize)
		if err != nil {
			return fmt.Errorf("--shard-size: %w", err)
		}
		opts.ShardSize = n
	}
	if opts.Ratio == 0 && len(opts.Layers) == 0 && opts.Preset == "" {
		return fmt.Errorf("say which layers to convert: --ratio 0.25, --layers 0,4,8 or --preset matvlm-25")
	}
	job, err := surgery.Prepare(opts)
	if err != nil {
		return err
	}
	defer job.Teacher.Close()
	sum := job.Summary()
	if c.DryRun {
		if g.JSON {
			return g.printJSON(struct {
				DryRun bool `json:"dry_run"`
				surgery.Summary
			}{true, sum})
		}
		if !g.Quiet {
			printPlan(g, sum)
			g.say("dry run: nothing written\n")
		}
		return nil
	}
	if err := outdir.Check(c.Out, c.Force, c.Teacher); err != nil {
		return err
	}
	if !g.Quiet && !g.JSON {
		printPlan(g, sum)
	}
	start := time.Now()
	res, err := job.Run(g.ctx)
	if err != nil {
		return err
	}
	elapsed := time.Since(start)
	if g.JSON {
		return g.printJSON(struct {
			*surgery.Result
			Seconds float64 `json:"seconds"`
		}{res, elapsed.Seconds()})
	}
	for _, w := range res.Warnings {
		fmt.Fprintln(g.stderr, "warning:", w)
	}
	g.say("wrote %s (%s, %d files) in %.1fs\n", res.Out, humanBytes(res.OutputBytes), len(res.Files), elapsed.Seconds())
	return nil
}

func printPlan(g *Globals, s surgery.Summary) {
	tw := g.table()
	fmt.Fprintf(tw, "teacher\t%s (%s, %d layers)\n", s.Teacher, s.Family, s.NumLayers)
	fmt.Fprintf(tw, "plan\t%s\n", s.Reason)
	fmt.Fprintf(tw, "mamba layers\t%s\n", joinInts(s.MambaLayers))
	if len(s.NewLayers) != len(s.MambaLayers) {
		fmt.Fprintf(tw, "new this time\t%s\n", joinInts(s.NewLayers))
	}
	fmt.Fprintf(tw, "attention layers\t%s\n", joinInts(s.AttnLayers))
	fmt.Fprintf(tw, "tensors\t-%d attention, +%d mixer (%s)\n", len(s.Removed), len(s.Added), s.DType)
	fmt.Fprintf(tw, "parameters\t-%s +%s (net %s)\n", humanCount(s.ParamsRemoved), humanCount(s.ParamsAdded), signed(s.ParamDelta))
	fmt.Fprintf(tw, "output size\t%s\n", humanBytes(s.OutputBytes))
	fmt.Fprintf(tw, "seed\t%d\n", s.Seed)
	tw.Flush()
}

func signed(n int64) string {
	if n >= 0 {
		return "+" + humanCount(n)
	}
	return "-" + humanCount(-n)
}
