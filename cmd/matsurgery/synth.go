package main

import (
	"fmt"
	"strings"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/synth"
)

// SynthCmd is `matsurgery synth`.
type SynthCmd struct {
	Out       string `arg:"" help:"Output directory."`
	Family    string `help:"Model family: phi, qwen2, llama." required:"" enum:"phi,qwen2,llama"`
	Preset    string `help:"Size: tiny (a few MB), small (~100 MB), full (the published model's shapes; phi ≈ 6.4 GB)." default:"tiny" enum:"tiny,small,full"`
	Seed      uint64 `help:"Seed (the same seed gives the same bytes)." default:"0"`
	DType     string `help:"Tensor dtype: BF16, F16, F32." default:"BF16" name:"dtype"`
	ShardSize string `help:"Largest shard, e.g. 5GB (default: Hugging Face's 5 GB)."`
	Force     bool   `help:"Replace an existing checkpoint in OUT."`
}

func (c *SynthCmd) Run(g *Globals) error {
	o := synth.Options{Family: formats.Family(c.Family), Preset: c.Preset, Seed: c.Seed, DType: formats.DType(upper(c.DType)),
		Out: c.Out, Force: c.Force, Progress: g.progress()}
	if c.ShardSize != "" {
		n, err := parseBytes(c.ShardSize)
		if err != nil {
			return fmt.Errorf("--shard-size: %w", err)
		}
		o.ShardSize = n
	}
	res, err := synth.Generate(g.ctx, o)
	if err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(res)
	}
	g.say("wrote %s: %s/%s, %d tensors, %s params, %s in %.1fs (%.2f GB/s): %s\n", res.Out, res.Family, res.Preset,
		res.Tensors, humanCount(res.Params), humanBytes(res.Bytes), res.Duration.Seconds(), res.Throughput()/1e9,
		strings.Join(res.Files, ", "))
	return nil
}
