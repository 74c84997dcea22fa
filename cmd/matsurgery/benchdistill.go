package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/matsurgery/matsurgery/backends"
	"github.com/matsurgery/matsurgery/distill"
)

// BenchDistillCmd is `matsurgery bench-distill`: whole distillation updates
// (teacher forward, student forward and backward, losses, AdamW) on
// synthetic inputs, one configuration after another, each on a fresh
// backend so that each peak is its own.
type BenchDistillCmd struct {
	Teacher string   `arg:"" help:"Teacher checkpoint." type:"existingdir"`
	Student string   `arg:"" help:"Hybrid checkpoint converted from the teacher." type:"existingdir"`
	Device  string   `help:"Compute device: auto, cpu, cuda, cuda:N." default:"auto"`
	Configs []string `help:"Configurations measured in turn: bf16, f32, with +recompute (activation recomputation)." default:"bf16" enum:"bf16,f32,bf16+recompute,f32+recompute"`
	SeqLen  int      `help:"Spliced sequence length of the sample: one image and text tokens." default:"1428"`
	Steps   int      `help:"Measured updates (one sample each)." default:"5"`
	Warmup  int      `help:"Unmeasured updates first." default:"2"`
	Peak    float64  `help:"Device peak in TFLOP/s for the MFU (0: an H200's dense bf16 989 or f32 67)." default:"0" placeholder:"TFLOPS"`
	Seed    uint64   `help:"Seed of the synthetic sample." default:"1"`
	Torch   string   `help:"JSON lines of testdata/gen/bench_distill_torch.py run on the same GPU: its rows join the table, with ratios." type:"existingfile" placeholder:"FILE"`
}

// torchRow is one variant's line of bench_distill_torch.py.
type torchRow struct {
	Variant    string   `json:"variant"`
	TokensPerS float64  `json:"tokens_per_s"`
	SPerUpdate float64  `json:"s_per_update"`
	PeakGiB    *float64 `json:"max_memory_allocated_GiB"`
	Tokens     int      `json:"tokens_per_update"`
	Error      string   `json:"error"`
	Trainable  int64    `json:"trainable_params"`
	AdamWFused bool     `json:"adamw_fused"`
}

func readTorchRows(path string) ([]torchRow, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var rows []torchRow
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "{") || !strings.Contains(line, `"variant"`) || strings.Contains(line, `"summary"`) {
			continue
		}
		var r torchRow
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		if r.Error == "" && r.TokensPerS > 0 {
			rows = append(rows, r)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(rows) == 0 {
		return nil, fmt.Errorf("%s: no measured variant (lines with \"variant\" and \"tokens_per_s\")", path)
	}
	return rows, nil
}

// benchDistillReport is --json's output.
type benchDistillReport struct {
	Results []distill.BenchResult `json:"results"`
	Torch   []torchRow            `json:"torch,omitempty"`
}

func (c *BenchDistillCmd) Run(g *Globals) error {
	var torch []torchRow
	if c.Torch != "" {
		var err error
		if torch, err = readTorchRows(c.Torch); err != nil {
			return fmt.Errorf("--torch: %w", err)
		}
	}
	var rep benchDistillReport
	for i, cfg := range c.Configs {
		prec, recompute := strings.CutSuffix(cfg, "+recompute")
		be, note, err := backends.Open(c.Device)
		if err != nil {
			return err
		}
		if note != "" && i == 0 && !g.Quiet {
			fmt.Fprintln(g.stderr, "note:", note)
		}
		if !g.Quiet && !g.JSON {
			fmt.Fprintf(g.stderr, "measuring %s on %s …\n", cfg, be.Name())
		}
		res, err := distill.BenchStep(g.ctx, distill.BenchOptions{
			Teacher: c.Teacher, Student: c.Student, Backend: be, SeqLen: c.SeqLen,
			Precision: prec, Recompute: recompute, Warmup: c.Warmup, Steps: c.Steps,
			PeakFLOPS: c.Peak * 1e12, Seed: c.Seed,
		})
		cerr := be.Close()
		if err != nil {
			return fmt.Errorf("bench-distill %s: %w", cfg, err)
		}
		if cerr != nil {
			return cerr
		}
		rep.Results = append(rep.Results, *res)
	}
	rep.Torch = torch
	if g.JSON {
		return g.printJSON(rep)
	}
	if g.Quiet {
		return nil
	}
	w := g.table()
	fmt.Fprintln(w, "engine\tconfig\ttokens/s\ts/update\tpeak memory\tMFU\tvs torch tokens/s\tvs torch memory")
	ratio := func(tps float64, mem float64) (string, string) {
		if len(torch) == 0 {
			return "–", "–"
		}
		t := torch[0]
		r1 := fmt.Sprintf("%.2f×", tps/t.TokensPerS)
		r2 := "–"
		if t.PeakGiB != nil && *t.PeakGiB > 0 && mem > 0 {
			r2 = fmt.Sprintf("%.2f×", mem/(*t.PeakGiB))
		}
		return r1, r2
	}
	for _, r := range rep.Results {
		cfg := r.Precision
		if r.Recompute {
			cfg += "+recompute"
		}
		mem, memGiB := "–", 0.0
		if r.PeakMemory > 0 {
			memGiB = float64(r.PeakMemory) / (1 << 30)
			mem = fmt.Sprintf("%.2f GiB", memGiB)
		}
		a, b := ratio(r.TokensPerS, memGiB)
		fmt.Fprintf(w, "matsurgery (%s)\t%s\t%.0f\t%.3f\t%s\t%.1f%%\t%s\t%s\n", r.Device, cfg, r.TokensPerS, r.SecondsPerStep, mem, 100*r.MFU, a, b)
	}
	for _, t := range torch {
		mem, memGiB := "–", 0.0
		if t.PeakGiB != nil {
			memGiB = *t.PeakGiB
			mem = fmt.Sprintf("%.2f GiB", memGiB)
		}
		a, b := ratio(t.TokensPerS, memGiB)
		fmt.Fprintf(w, "torch\t%s\t%.0f\t%.3f\t%s\t–\t%s\t%s\n", t.Variant, t.TokensPerS, t.SPerUpdate, mem, a, b)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if len(rep.Results) > 0 {
		r := rep.Results[0]
		g.say("sequence %d, %d measured updates of one sample, %.2f TFLOP each, %d trainable parameters, frozen weights shared with the teacher: %v\n",
			r.SeqLen, r.Steps, r.FLOPsPerStep/1e12, r.Trainable, r.Shared)
	}
	if len(torch) > 0 {
		g.say("ratios are to torch's first variant (%s); torch peak is max_memory_allocated, ours the tensors live at the peak\n", torch[0].Variant)
	}
	return nil
}
