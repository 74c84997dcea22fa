package main

import (
	"fmt"

	"github.com/matsurgery/matsurgery/backends"
	"github.com/matsurgery/matsurgery/bench"
	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/model"
)

// BenchCmd is `matsurgery bench`.
type BenchCmd struct {
	Model    string `arg:"" help:"Checkpoint directory (teacher or hybrid)." type:"existingdir"`
	Contexts []int  `help:"Prompt lengths in tokens." default:"1024,4096"`
	Decode   int    `help:"Tokens decoded after each prefill." default:"32"`
	Device   string `help:"Compute device: auto, cpu, cuda, cuda:N." default:"auto"`
	Seed     uint64 `help:"Seed of the random prompt tokens." default:"0"`
}

func (c *BenchCmd) Run(g *Globals) error {
	cfg, err := formats.ReadModelConfig(c.Model)
	if err != nil {
		return err
	}
	be, note, err := backends.Open(c.Device)
	if err != nil {
		return err
	}
	defer be.Close()
	if note != "" && !g.Quiet {
		fmt.Fprintln(g.stderr, "note:", note)
	}
	m, err := model.Load(c.Model, be, model.Options{DecodeReserve: c.Decode + 8})
	if err != nil {
		return err
	}
	defer m.Close()
	rows, err := bench.Run(m, bench.Options{Contexts: c.Contexts, DecodeTokens: c.Decode, Vocab: cfg.Text.VocabSize, Seed: c.Seed})
	if err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(struct {
			Model       string      `json:"model"`
			Device      string      `json:"device"`
			MambaLayers []int       `json:"mamba_layers"`
			Rows        []bench.Row `json:"rows"`
		}{c.Model, be.Name(), m.MambaLayers(), rows})
	}
	if g.Quiet {
		return nil
	}
	fmt.Fprintf(g.stdout, "model %s (%d of %d layers Mamba) on %s\n", c.Model, len(m.MambaLayers()), m.NumLayers(), be.Name())
	tw := g.table()
	fmt.Fprintln(tw, "context\tprefill tok/s\tdecode tok/s\tpeak host\tpeak device")
	for _, r := range rows {
		dev := "-"
		if r.PeakDeviceBytes > 0 {
			dev = humanBytes(r.PeakDeviceBytes)
		}
		fmt.Fprintf(tw, "%d\t%.1f\t%.2f\t%s\t%s\n", r.Context, r.PrefillTokPerS, r.DecodeTokPerS, humanBytes(r.PeakHostBytes), dev)
	}
	return tw.Flush()
}
