// Command matsurgery turns a pretrained TinyLLaVA vision-language model into a
// hybrid Mamba-2/Transformer model (MaTVLM): convert, verify, distil.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"context"

	"github.com/alecthomas/kong"
	"github.com/willabides/kongplete"
)

// Globals are flags every command takes.
type Globals struct {
	JSON  bool `help:"Print the report as JSON on stdout." name:"json"`
	Quiet bool `help:"Print nothing but errors (and the JSON report with --json)." short:"q"`
	// CPUProfile writes a pprof CPU profile of the command (for developers).
	CPUProfile string `help:"Write a CPU profile to this file." hidden:"" type:"path"`

	stdout io.Writer
	stderr io.Writer
	ctx    context.Context
}

// CLI is the command tree.
type CLI struct {
	Globals

	Convert ConvertCmd `cmd:"" help:"Convert a TinyLLaVA teacher into a hybrid Mamba-2/Transformer checkpoint."`

	Generate           GenerateCmd                  `cmd:"" help:"Answer a question about an image with a teacher or hybrid, streaming tokens."`
	Bench              BenchCmd                     `cmd:"" help:"Measure prefill and decode tokens/s and peak memory at several context lengths."`
	BenchDistill       BenchDistillCmd              `cmd:"" name:"bench-distill" help:"Measure whole distillation updates (tokens/s, peak memory, MFU), optionally beside PyTorch's."`
	Inspect            InspectCmd                   `cmd:"" help:"Show what a checkpoint holds: family, sizes, parameters, dtypes, layer kinds, problems."`
	Synth              SynthCmd                     `cmd:"" help:"Write a random-weight TinyLLaVA checkpoint of real shapes (for tests, demos, benchmarks)."`
	Verify             VerifyCmd                    `cmd:"" help:"Prove a hybrid: linear-attention identity, chunked vs sequential scan, distance to softmax attention, integrity."`
	Distill            DistillCmd                   `cmd:"" help:"Distil a hybrid from its teacher (KL + layer L2 [+ CE]), with checkpoints, exact resume and an exported hybrid."`
	Demo               DemoCmd                      `cmd:"" help:"Run the whole pipeline on a tiny embedded teacher: convert, verify, distil, answer (seconds on a laptop CPU)."`
	Devices            DevicesCmd                   `cmd:"" help:"Show the compute devices matsurgery can use (GPU driver, libraries, memory) or why not."`
	Version            VersionCmd                   `cmd:"" help:"Print the version."`
	InstallCompletions kongplete.InstallCompletions `cmd:"" help:"Install shell completions (bash, zsh, fish)."`
}

// exitError carries an exit code without printing anything more.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var cli CLI
	cli.stdout, cli.stderr, cli.ctx = stdout, stderr, ctx
	parser, err := kong.New(&cli,
		kong.Name("matsurgery"),
		kong.Description("Turn a TinyLLaVA VLM into a hybrid Mamba-2/Transformer model (MaTVLM): convert, verify, distil."),
		kong.UsageOnError(),
		kong.DefaultEnvars("MATSURGERY"),
		kong.ConfigureHelp(kong.HelpOptions{Compact: true}),
		kong.Writers(stdout, stderr),
		kong.Exit(func(code int) { panic(exitError{code}) }),
	)
	if err != nil {
		fmt.Fprintln(stderr, "matsurgery:", err)
		return 2
	}
	code := 0
	func() {
		defer func() {
			if r := recover(); r != nil {
				if e, ok := r.(exitError); ok {
					code = e.code
					return
				}
				panic(r)
			}
		}()
		kongplete.Complete(parser)
		kctx, err := parser.Parse(args)
		if err != nil {
			fmt.Fprintln(stderr, "matsurgery:", err)
			code = 2
			return
		}
		if cli.CPUProfile != "" {
			f, err := os.Create(cli.CPUProfile)
			if err != nil {
				fmt.Fprintln(stderr, "matsurgery:", err)
				code = 1
				return
			}
			defer f.Close()
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
		if err := kctx.Run(&cli.Globals); err != nil {
			var ee exitError
			if errors.As(err, &ee) {
				code = ee.code
				return
			}
			fmt.Fprintln(stderr, "matsurgery:", err)
			code = 1
		}
	}()
	return code
}
