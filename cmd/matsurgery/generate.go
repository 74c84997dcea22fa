package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/matsurgery/matsurgery/backends"
	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/generate"
	"github.com/matsurgery/matsurgery/images"
	"github.com/matsurgery/matsurgery/model"
	"github.com/matsurgery/matsurgery/prompt"
	"github.com/matsurgery/matsurgery/tokenizer"
)

// GenerateCmd is `matsurgery generate`.
type GenerateCmd struct {
	Model        string  `arg:"" help:"Checkpoint directory (teacher or hybrid) with its tokenizer.json." type:"existingdir"`
	Image        string  `help:"Image file (PNG or JPEG); without one the prompt is text-only." type:"existingfile"`
	Prompt       string  `help:"The question." required:""`
	MaxNewTokens int     `help:"Most tokens to generate." default:"128"`
	Temperature  float64 `help:"Sampling temperature; 0 is greedy." default:"0"`
	TopP         float64 `help:"Nucleus sampling mass (with temperature > 0)." default:"1"`
	Seed         uint64  `help:"Sampling seed." default:"0"`
	Device       string  `help:"Compute device: auto, cpu, cuda, cuda:N." default:"auto"`
	ApplyEXIF    bool    `help:"Turn the image upright by its EXIF orientation (TinyLLaVA itself does not)." name:"apply-exif"`
}

func (c *GenerateCmd) Run(g *Globals) error {
	cfg, err := formats.ReadModelConfig(c.Model)
	if err != nil {
		return err
	}
	tok, err := tokenizer.Load(filepath.Join(c.Model, "tokenizer.json"))
	if err != nil {
		return err
	}
	question := c.Prompt
	var pixels []float32
	if c.Image != "" {
		img, err := images.LoadWithOptions(c.Image, images.LoadOptions{ApplyEXIF: c.ApplyEXIF})
		if err != nil {
			return err
		}
		mode, err := images.ParseMode(cfg.ImageAspectRatio)
		if err != nil {
			return fmt.Errorf("%s: image_aspect_ratio: %w", cfg.Path, err)
		}
		if pixels, err = images.Preprocess(img, cfg.Vision.ImageSize, mode); err != nil {
			return err
		}
	}
	var ids []int
	if pixels != nil {
		ids, err = prompt.ForGeneration(cfg.Family, question, tok)
	} else {
		ids, err = prompt.ForTextGeneration(cfg.Family, question, tok)
	}
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
	m, err := model.Load(c.Model, be, model.Options{})
	if err != nil {
		return err
	}
	defer m.Close()
	stream := func(s string) error {
		if g.JSON || g.Quiet {
			return nil
		}
		_, err := fmt.Fprint(g.stdout, s)
		if f, ok := g.stdout.(*os.File); ok {
			f.Sync()
		}
		return err
	}
	res, err := generate.Run(m, tok, pixels, ids, generate.Options{MaxNewTokens: c.MaxNewTokens, Temperature: c.Temperature,
		TopP: c.TopP, Seed: c.Seed, StopIDs: generate.StopIDs(tok)}, stream)
	if err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(res)
	}
	if !g.Quiet {
		fmt.Fprintln(g.stdout)
		fmt.Fprintf(g.stderr, "%d prompt tokens at %.1f tok/s, %d new at %.1f tok/s (%s, stopped by %s)\n", res.PromptTokens,
			res.PrefillTokPerS, len(res.NewTokens), res.DecodeTokPerS, be.Name(), res.StoppedBy)
	}
	return nil
}
