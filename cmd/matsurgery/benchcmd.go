package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/matsurgery/matsurgery/backends"
	"github.com/matsurgery/matsurgery/bench"
	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/model"
)

// BenchCmd is `matsurgery bench`.
type BenchCmd struct {
	Models       []string      `arg:"" name:"model" help:"Checkpoint directories (teacher or hybrid). With several, the first is the baseline the others are compared with (the teacher)." type:"existingdir"`
	Contexts     []int         `help:"Prompt lengths in tokens (measured in ascending order)." default:"1024,4096"`
	Decode       int           `help:"Tokens decoded after each prefill." default:"32"`
	Device       string        `help:"Compute device: auto, cpu, cuda, cuda:N." default:"auto"`
	Seed         uint64        `help:"Seed of the random prompt tokens." default:"0"`
	Precision    string        `help:"Activations in products with bf16 weights and in the Mamba scans: bf16 (a bf16 inference engine's arithmetic, tensor cores on a GPU) or f32." default:"bf16" enum:"bf16,f32"`
	Repeats      int           `help:"Measurements per context; the medians are reported." default:"1"`
	RepeatBudget time.Duration `help:"Stop repeating a context once its measurements have taken this long (0: no limit)." default:"0s"`
	Label        []string      `help:"Names of the models in the table, in order (default: the directories' base names)."`
	External     []string      `help:"Figures another engine measured on the same prompt lengths, as JSON lines (testdata/gen/bench_hf_generate.py), added to the table and compared with the first model." type:"existingfile"`
	Attention    bool          `help:"Also time one layer's softmax attention forward alone at each context, on the first model's shapes."`
}

// benchReport is bench's JSON report.
type benchReport struct {
	Device       string               `json:"device"`
	Precision    string               `json:"precision"`
	DecodeTokens int                  `json:"decode_tokens"`
	Seed         uint64               `json:"seed"`
	Results      []bench.Result       `json:"results"`
	Ratios       []bench.Ratio        `json:"ratios,omitempty"`
	Attention    []bench.AttentionRow `json:"attention,omitempty"`
}

func (c *BenchCmd) Run(g *Globals) error {
	if len(c.Label) > len(c.Models) {
		return fmt.Errorf("%d labels for %d models", len(c.Label), len(c.Models))
	}
	if c.Repeats < 1 {
		return fmt.Errorf("--repeats %d: want at least 1", c.Repeats)
	}
	prec, err := model.ParsePrecision(c.Precision)
	if err != nil {
		return err
	}
	rep := benchReport{Precision: string(prec), DecodeTokens: c.Decode, Seed: c.Seed}
	for i, dir := range c.Models {
		label := filepath.Base(filepath.Clean(dir))
		if i < len(c.Label) {
			label = c.Label[i]
		}
		res, att, err := c.measure(g, dir, label, prec, i == 0)
		if err != nil {
			return fmt.Errorf("bench %s: %w", dir, err)
		}
		rep.Device = res.Device
		rep.Results = append(rep.Results, res)
		if att != nil {
			rep.Attention = att
		}
	}
	for _, path := range c.External {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		ext, err := bench.ReadExternal(f, path)
		f.Close()
		if err != nil {
			return err
		}
		rep.Results = append(rep.Results, ext...)
	}
	rep.Ratios = bench.Compare(rep.Results)
	if g.JSON {
		return g.printJSON(rep)
	}
	if g.Quiet {
		return nil
	}
	fmt.Fprintf(g.stdout, "%s, precision %s, %d tokens decoded after each prompt of random ids (seed %d)\n",
		rep.Device, rep.Precision, c.Decode, c.Seed)
	for _, r := range rep.Results {
		if r.Layers == 0 {
			continue
		}
		w := ""
		if r.WeightsDeviceBytes > 0 {
			w = ", " + bench.HumanBytes(r.WeightsDeviceBytes) + " on the device once loaded"
		}
		mamba := ""
		if len(r.MambaLayers) > 0 {
			mamba = " " + joinInts(r.MambaLayers)
		}
		fmt.Fprintf(g.stdout, "%s: %s, %d of %d layers Mamba%s%s\n", r.Label, r.Model, len(r.MambaLayers), r.Layers, mamba, w)
	}
	if len(rep.Results) > 1 {
		fmt.Fprintf(g.stdout, "×: tokens/s over %s's; memory: peak device memory against %s's\n", rep.Results[0].Label, rep.Results[0].Label)
	}
	if err := bench.WriteTable(g.stdout, rep.Results); err != nil {
		return err
	}
	if len(rep.Attention) > 0 {
		base := rep.Results[0]
		fmt.Fprintf(g.stdout, "softmax attention forward alone, one layer (%s has %d attention layers):\n", base.Label, rep.Attention[0].Layers)
		for _, a := range rep.Attention {
			share := ""
			for _, x := range base.Rows {
				if x.Context == a.Context && x.PrefillSeconds > 0 {
					share = fmt.Sprintf(", all layers %.0f%% of %s's prefill", 100*a.Seconds*float64(a.Layers)/x.PrefillSeconds, base.Label)
				}
			}
			fmt.Fprintf(g.stdout, "  %d tokens: %.2f ms%s\n", a.Context, 1000*a.Seconds, share)
		}
	}
	return nil
}

// measure loads one model on a backend of its own (so that the peak
// device memory is this model's) and benchmarks it. The first model also
// prints the device note and times the attention when asked.
func (c *BenchCmd) measure(g *Globals, dir, label string, prec model.Precision, first bool) (bench.Result, []bench.AttentionRow, error) {
	res := bench.Result{Label: label, Model: dir, Engine: "matsurgery " + string(prec)}
	cfg, err := formats.ReadModelConfig(dir)
	if err != nil {
		return res, nil, err
	}
	be, note, err := backends.Open(c.Device)
	if err != nil {
		return res, nil, err
	}
	defer be.Close()
	if note != "" && first && !g.Quiet {
		fmt.Fprintln(g.stderr, "note:", note)
	}
	res.Device = be.Name()
	m, err := model.Load(dir, be, model.Options{DecodeReserve: c.Decode + 8, Precision: prec})
	if err != nil {
		return res, nil, err
	}
	defer m.Close()
	res.Layers, res.MambaLayers = m.NumLayers(), append([]int{}, m.MambaLayers()...)
	if mr, ok := be.(kernels.MemoryReporter); ok {
		if err := be.Sync(); err != nil {
			return res, nil, err
		}
		res.WeightsDeviceBytes, _ = mr.DeviceMemory()
	}
	o := bench.Options{Contexts: c.Contexts, DecodeTokens: c.Decode, Vocab: cfg.Text.VocabSize,
		Seed: c.Seed, Repeats: c.Repeats, RepeatBudget: c.RepeatBudget}
	if !g.Quiet && !g.JSON {
		o.Progress = func(r bench.Row) { // on stderr, so that a long run shows its figures as they come
			fmt.Fprintf(g.stderr, "%s: %d tokens: prefill %.1f tok/s, decode %.2f tok/s, peak %s\n", label, r.Context,
				r.PrefillTokPerS, r.DecodeTokPerS, r.PeakMemory())
		}
	}
	res.Rows, err = bench.Run(m, o)
	if err != nil {
		return res, nil, err
	}
	var att []bench.AttentionRow
	if first && c.Attention {
		if att, err = bench.Attention(m, c.Contexts, c.Seed); err != nil {
			return res, nil, err
		}
	}
	return res, att, nil
}
