package model

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/initmap"
	"github.com/matsurgery/matsurgery/kernels/cpu"
	"github.com/matsurgery/matsurgery/surgery"
	"github.com/matsurgery/matsurgery/synth"
)

// Benchmarks of prefill and decode throughput on the CPU backend:
//
//	go test ./model -run '^$' -bench . -benchtime 3x
//
// for the phi-tiny fixture and its hybrid, and for the synth "small" Phi-2
// preset (hidden 640, 8 layers, vocabulary 51200, SigLIP at 384 px: 728
// image rows), generated once into a temporary directory, and its 25%
// hybrid. Prompts are an image and 60 text tokens; decode steps start
// after such a prompt and restart from it every decodeRun steps, so the
// context stays near the prompt's length.

const decodeRun = 64

var (
	smallOnce sync.Once
	smallDir  string
	smallErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if smallDir != "" {
		os.RemoveAll(smallDir)
	}
	os.Exit(code)
}

// smallModels generates the small Phi-2 preset and its 25% hybrid once.
func smallModels(b *testing.B) (teacher, hybrid string) {
	b.Helper()
	smallOnce.Do(func() {
		if smallDir, smallErr = os.MkdirTemp("", "matsurgery-model-bench-"); smallErr != nil {
			return
		}
		teacher := filepath.Join(smallDir, "phi-small")
		if _, smallErr = synth.Generate(context.Background(), synth.Options{Family: formats.Phi, Preset: synth.Small,
			Seed: 1, DType: formats.BF16, Out: teacher}); smallErr != nil {
			return
		}
		job, err := surgery.Prepare(surgery.Options{Teacher: teacher, Out: filepath.Join(smallDir, "phi-small-h25"), Ratio: 0.25, Seed: 1, Init: initmap.Defaults()})
		if err != nil {
			smallErr = err
			return
		}
		defer job.Teacher.Close()
		_, smallErr = job.Run(context.Background())
	})
	if smallErr != nil {
		b.Fatalf("small benchmark models: %v", smallErr)
	}
	return filepath.Join(smallDir, "phi-small"), filepath.Join(smallDir, "phi-small-h25")
}

// benchModels lists the benchmarked checkpoints; the small ones are
// generated on first use.
var benchModels = []struct {
	name string
	dir  func(*testing.B) string
}{
	{"phi-tiny", func(*testing.B) string { return filepath.Join(fixtures, "phi-tiny") }},
	{"phi-tiny-h25", func(*testing.B) string { return filepath.Join(fixtures, "phi-tiny-h25") }},
	{"phi-small", func(b *testing.B) string { t, _ := smallModels(b); return t }},
	{"phi-small-h25", func(b *testing.B) string { _, h := smallModels(b); return h }},
}

// benchPrompt is one random image and 60 random text tokens around its
// placeholder.
func benchPrompt(m *Model) ([]float32, []int) {
	rng := rand.New(rand.NewPCG(3, 4))
	px := make([]float32, m.vision.pixelCount())
	for i := range px {
		px[i] = float32(2*rng.Float64() - 1)
	}
	ids := make([]int, 61)
	for i := range ids {
		ids[i] = rng.IntN(m.sizes.vocab)
	}
	ids[40] = m.Config.ImageTokenIndex
	return px, ids
}

func loadBench(b *testing.B, dir string) *Model {
	b.Helper()
	be := cpu.New(0)
	m, err := Load(dir, be, Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		m.Close()
		be.Close()
	})
	return m
}

func BenchmarkPrefill(b *testing.B) {
	for _, bm := range benchModels {
		b.Run(bm.name, func(b *testing.B) {
			m := loadBench(b, bm.dir(b))
			px, ids := benchPrompt(m)
			L := m.SequenceLength(ids)
			if _, err := m.Prefill(px, ids); err != nil { // allocate the activations
				b.Fatal(err)
			}
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				if _, err := m.Prefill(px, ids); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(L*b.N)/time.Since(start).Seconds(), "tok/s")
			b.ReportMetric(float64(L), "tokens")
		})
	}
}

func BenchmarkDecode(b *testing.B) {
	for _, bm := range benchModels {
		b.Run(bm.name, func(b *testing.B) {
			m := loadBench(b, bm.dir(b))
			px, ids := benchPrompt(m)
			rng := rand.New(rand.NewPCG(9, 9))
			var busy time.Duration
			for done := 0; done < b.N; {
				b.StopTimer()
				if _, err := m.Prefill(px, ids); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				start := time.Now()
				for i := 0; i < decodeRun && done < b.N; i, done = i+1, done+1 {
					if _, err := m.Step(rng.IntN(m.sizes.vocab)); err != nil {
						b.Fatal(fmt.Errorf("step %d: %w", i, err))
					}
				}
				busy += time.Since(start)
			}
			b.ReportMetric(float64(b.N)/busy.Seconds(), "tok/s")
		})
	}
}

// BenchmarkLoad measures Load (read, convert, upload) of the small Phi-2
// preset, in checkpoint bytes per second.
func BenchmarkLoad(b *testing.B) {
	dir, _ := smallModels(b)
	var size int64
	entries, err := os.ReadDir(dir)
	if err != nil {
		b.Fatal(err)
	}
	for _, e := range entries {
		if info, err := e.Info(); err == nil && filepath.Ext(e.Name()) == ".safetensors" {
			size += info.Size()
		}
	}
	for _, f32 := range []bool{false, true} {
		b.Run(fmt.Sprintf("phi-small/f32=%v", f32), func(b *testing.B) {
			b.SetBytes(size)
			for range b.N {
				be := cpu.New(0)
				m, err := Load(dir, be, Options{F32Weights: f32})
				if err != nil {
					b.Fatal(err)
				}
				m.Close()
				be.Close()
			}
		})
	}
}
