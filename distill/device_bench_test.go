package distill

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/cpu"
	"github.com/matsurgery/matsurgery/kernels/cuda"
	"github.com/matsurgery/matsurgery/optim"
)

// flopSpy is the CPU backend summing the FLOPs of its matrix products.
type flopSpy struct {
	*cpu.Backend
	flops float64
}

func (s *flopSpy) MatMul(out, a, b kernels.Tensor, transB bool) error {
	sh := a.Shape()
	k := sh[len(sh)-1]
	s.flops += 2 * float64(out.Len()) * float64(k)
	return s.Backend.MatMul(out, a, b, transB)
}

func (s *flopSpy) MatMulAT(out, a, b kernels.Tensor, accumulate bool) error {
	m := out.Shape()[0]
	s.flops += 2 * float64(out.Len()) * float64(a.Len()/m)
	return s.Backend.MatMulAT(out, a, b, accumulate)
}

// BenchFLOPs' count of the matrix products is the products an update
// runs (teacher, student forward and backward, the layer term), counted
// one by one on the backend; with and without the layer term, on the Phi
// (parallel) and Qwen2 (sequential, gated, GQA) blocks.
func TestBenchFLOPsCountsProducts(t *testing.T) {
	for _, c := range devCases(t)[:2] {
		for _, layerTerm := range []bool{true, false} {
			spy := &flopSpy{Backend: cpu.New(2)}
			ds := loadDevice(t, spy, c, DeviceOptions{})
			smp := devSamples(t, c.golden, ds.ImageTokens(), ds.sizes.vocab, newRand(3))[1]
			cfg := c.cfg
			if !layerTerm {
				cfg.Beta = 0
			}
			if err := ds.ZeroGrad(); err != nil {
				t.Fatal(err)
			}
			spy.flops = 0
			if _, _, err := ds.Accumulate(DeviceSample{IDs: smp.ids, Pixels: smp.pixels, Labels: smp.labels}, cfg); err != nil {
				t.Fatal(err)
			}
			gemm, attention := benchFLOPs(ds, true, len(smp.labels), 1, layerTerm)
			if math.Abs(spy.flops-gemm) > 1e-12*gemm {
				t.Errorf("%s, layer term %v: the products ran %.0f FLOPs, BenchFLOPs counts %.0f", c.name, layerTerm, spy.flops, gemm)
			}
			if !(attention > 0) || BenchFLOPs(ds, ds.teacher, len(smp.labels), 1, layerTerm) != gemm+attention {
				t.Errorf("%s: attention FLOPs %g", c.name, attention)
			}
			t.Logf("%s, layer term %v: %.4g FLOPs in products, %.4g in attention", c.name, layerTerm, gemm, attention)
		}
	}
}

// BenchStep on the CPU backend and the tiny phi: its figures are
// consistent (tokens/s = rows / seconds a step, MFU = FLOPs / seconds /
// peak) and the loss finite.
func TestBenchStep(t *testing.T) {
	res, err := BenchStep(context.Background(), BenchOptions{
		Teacher: filepath.Join(fixtures, "phi-tiny"), Student: filepath.Join(fixtures, "phi-tiny-h25"), Backend: cpu.New(2),
		SeqLen: 40, Warmup: 1, Steps: 2, PeakFLOPS: 1e11, Seed: 3,
	})
	if err != nil {
		t.Fatal(err)
	}
	js, _ := json.Marshal(res)
	t.Logf("%s", js)
	if res.SeqLen != 40 || res.Steps != 2 || !(res.SecondsPerStep > 0) || !(res.UpdateSeconds > 0) || res.UpdateSeconds >= res.SecondsPerStep {
		t.Errorf("timings %+v", res)
	}
	if math.Abs(res.TokensPerS*res.SecondsPerStep-40) > 1e-9 || math.Abs(res.MFU*res.SecondsPerStep*res.PeakFLOPS-res.FLOPsPerStep) > 1e-6*res.FLOPsPerStep {
		t.Errorf("tokens/s %g, MFU %g do not follow from %g s, %g FLOPs", res.TokensPerS, res.MFU, res.SecondsPerStep, res.FLOPsPerStep)
	}
	if !res.Shared || res.Activations <= 0 || res.Trainable <= 0 || math.IsNaN(res.LastLoss) || !(res.LastLoss > 0) {
		t.Errorf("result %+v", res)
	}
	if _, err := BenchStep(context.Background(), BenchOptions{Teacher: filepath.Join(fixtures, "phi-tiny"),
		Student: filepath.Join(fixtures, "phi-tiny-h25"), Backend: cpu.New(1), SeqLen: 10}); err == nil {
		t.Error("a sequence shorter than the image was accepted")
	}
}

// On a GPU: the device step on the CUDA backend equals the host trainer's
// (f32 precision), and bf16 stays close to f32 there. Skips without a GPU:
//
//	CGO_ENABLED=0 go test -c -o bin/distill.test ./distill && (cd distill && ../bin/distill.test -test.run CUDA -test.v)
func TestDeviceStepCUDA(t *testing.T) {
	if ok, why := cuda.Available(); !ok {
		t.Skip("no GPU (" + why + ")")
	}
	for _, c := range devCases(t) {
		t.Run(c.name, func(t *testing.T) {
			be, err := cuda.New(0)
			if err != nil {
				t.Fatal(err)
			}
			defer be.Close()
			ds := loadDevice(t, be, c, DeviceOptions{Dropout: 0.1})
			samples := devSamples(t, c.golden, ds.ImageTokens(), ds.sizes.vocab, newRand(77))
			const lr, maxNorm = 3e-3, 0.5
			host := runHostUpdate(t, c, samples, 0.1, lr, maxNorm)
			dev := runDeviceUpdate(t, ds, c.cfg, samples, lr, maxNorm)
			compareUpdates(t, host, dev)
			if c.name == "llama" {
				return
			}
			b16 := loadDevice(t, be, c, DeviceOptions{Dropout: 0.1, Precision: PrecisionBF16})
			if !b16.attn16 {
				t.Error("bf16: the CUDA attention was found not to take bf16 q, k, v")
			}
			if !b16.scan16 {
				t.Error("bf16: the CUDA scan was found not to take bf16 x, B, C")
			}
			b := runDeviceUpdate(t, b16, c.cfg, samples, lr, maxNorm)
			worst := 0.0
			for name, g := range dev.grads {
				worst = max(worst, relDiff(b.grads[name], g))
			}
			for k := range b.losses {
				checkLosses(t, "bf16", b.losses[k], dev.losses[k], bf16LossTol)
			}
			if !(worst <= bf16GradTol) {
				t.Errorf("bf16 gradients: worst relative error %.3g > %.3g", worst, bf16GradTol)
			}
			t.Logf("bf16: worst gradient %.3g", worst)
		})
	}
}

// BenchStep at full size, when MATSURGERY_BENCH_TEACHER and
// MATSURGERY_BENCH_STUDENT name a teacher and its hybrid (e.g. the full
// synthetic phi and its 25% conversion) and a GPU is there. It prints one
// JSON line per configuration (MATSURGERY_BENCH_SEQ sets the length,
// default 1428; MATSURGERY_BENCH_STEPS the measured updates, default 5),
// appended to the file MATSURGERY_BENCH_OUT names when set.
func TestBenchStepCUDA(t *testing.T) {
	teacher, student := os.Getenv("MATSURGERY_BENCH_TEACHER"), os.Getenv("MATSURGERY_BENCH_STUDENT")
	if teacher == "" || student == "" {
		t.Skip("MATSURGERY_BENCH_TEACHER and MATSURGERY_BENCH_STUDENT not set")
	}
	if ok, why := cuda.Available(); !ok {
		t.Skip("no GPU (" + why + ")")
	}
	seq, steps := 1428, 5
	if v, err := strconv.Atoi(os.Getenv("MATSURGERY_BENCH_SEQ")); err == nil {
		seq = v
	}
	if v, err := strconv.Atoi(os.Getenv("MATSURGERY_BENCH_STEPS")); err == nil {
		steps = v
	}
	for _, cfg := range []struct {
		prec      string
		recompute bool
	}{{PrecisionBF16, false}, {PrecisionF32, false}, {PrecisionBF16, true}} {
		be, err := cuda.New(0)
		if err != nil {
			t.Fatal(err)
		}
		res, err := BenchStep(context.Background(), BenchOptions{Teacher: teacher, Student: student, Backend: be, SeqLen: seq,
			Precision: cfg.prec, Recompute: cfg.recompute, Warmup: 2, Steps: steps, Seed: 1})
		be.Close()
		if err != nil {
			t.Errorf("%s, recompute %v: %v", cfg.prec, cfg.recompute, err)
			continue
		}
		js, _ := json.Marshal(res)
		t.Logf("bench: %s", js)
		if out := os.Getenv("MATSURGERY_BENCH_OUT"); out != "" {
			f, err := os.OpenFile(out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			f.Write(append(js, '\n'))
			f.Close()
		}
	}
}

// The device update on the CPU backend against the host trainer's
// (BenchmarkStudentStep's sizes: phi-tiny hybrid, 100 rows, the default
// loss, dropout 0.1), teacher included in both: the device path's cost of
// going through backend operations. f32 and bf16 precision.
func BenchmarkDeviceUpdate(b *testing.B) {
	c := devCase{name: "phi", teacher: "phi-tiny", student: "phi-tiny-h25", golden: "phi-h25", cfg: DefaultLoss()}
	g := openGolden(b, c.golden)
	pixels, ids := g.f32("pixel_values"), g.ids("input_ids")
	rng := newRand(60)
	for len(ids)+14 < 100 {
		ids = append(ids, 1+rng.IntN(1000))
	}
	smp := DeviceSample{IDs: ids, Pixels: pixels}
	for _, prec := range []string{PrecisionF32, PrecisionBF16} {
		b.Run(prec, func(b *testing.B) {
			ds := loadDevice(b, cpu.New(0), c, DeviceOptions{Precision: prec, Dropout: 0.1})
			opt := optim.Recipe()
			n := ds.SequenceLength(ids)
			for i := 0; b.Loop(); i++ {
				if err := ds.ZeroGrad(); err != nil {
					b.Fatal(err)
				}
				smp.Dropout = &DropoutKey{Seed: 1, Step: i}
				if _, _, err := ds.Accumulate(smp, c.cfg); err != nil {
					b.Fatal(err)
				}
				if _, err := ds.Update(1, 1e-4, 1, opt); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}
